import Glibc

/// The Unix socket's listening descriptor, made here rather than by NIO: NIO unlinks the socket's path when it
/// closes a listener it bound, and in a restart with so_reuseport the new process has bound that path again by
/// then (it removes the old file first, as PgBouncer does) — the old process's exit would take the new one's
/// socket off the file system. Shoal removes the path only while it is still the file it made (`ownedFile`).
struct UnixListenSocket {
    let descriptor: CInt
    let path: String
    /// The file system's identity of the socket file as bound here.
    let device: UInt64
    let inode: UInt64

    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    /// Binds and listens on `path` (an existing file there is removed first), with `mode` set before listen.
    static func make(path: String, mode: Int, backlog: Int) throws(Failure) -> UnixListenSocket {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else { throw Failure(description: "path too long for a Unix socket") }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (index, byte) in bytes.enumerated() { raw[index] = byte }
            raw[bytes.count] = 0
        }
        let descriptor = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard descriptor >= 0 else { throw Failure(description: "socket: errno \(errno)") }
        unlink(path)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(descriptor, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard bound == 0 else {
            let error = errno
            close(descriptor)
            throw Failure(description: "bind: errno \(error)")
        }
        chmod(path, mode_t(mode))
        var status = stat()
        guard stat(path, &status) == 0, listen(descriptor, Int32(clamping: backlog)) == 0 else {
            let error = errno
            close(descriptor)
            unlink(path)
            throw Failure(description: "listen: errno \(error)")
        }
        return UnixListenSocket(descriptor: descriptor, path: path, device: UInt64(status.st_dev), inode: UInt64(status.st_ino))
    }

    /// Whether `path` is still the socket file made here (not one another process bound there since).
    var ownedFile: Bool {
        var status = stat()
        return stat(path, &status) == 0 && UInt64(status.st_dev) == device && UInt64(status.st_ino) == inode
    }

    /// Removes the socket file if it is still this one; called once the listener is closed.
    func removeOwnedFile() {
        if ownedFile { unlink(path) }
    }
}
