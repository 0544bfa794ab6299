import Foundation
import Testing

/// The deployment files as far as this machine can run them: the Kustomize overlays render and validate
/// against the Kubernetes API schema, their pgbouncer.ini passes `shoal --check`, and the Debian package
/// installs, starts under a systemd notify socket, reloads, stops and is purged.
@Suite(.serialized) struct DeploymentTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    static let shoal = root.appendingPathComponent(".build/debug/shoal").path

    /// The binary docker/Dockerfile's build stage makes (static Swift runtime, stripped), built by running that
    /// stage on exactly the files its COPY lines and .dockerignore take from the checkout. scripts/test.sh runs
    /// it first; alone, a test runs it here (minutes on two cores).
    static func imageBinary() throws -> String {
        let binary = root.appendingPathComponent(".build-docker/out/usr/bin/shoal").path
        if !FileManager.default.fileExists(atPath: binary) {
            let stage = try ProcessRunner.run("python3", [root.appendingPathComponent("docker/run-build-stage.py").path], timeout: 2400)
            #expect(stage.status == 0, "\(stage.stdout)\(stage.stderr)")
        }
        return binary
    }

    @Test(arguments: ["base", "overlays/moodle-azure", "overlays/aurora-departments"])
    func kustomizationRendersValidatesAndItsConfigPassesCheck(_ directory: String) throws {
        let scratch = "/tmp/shoal-k8s-\(getpid())-\(directory.replacingOccurrences(of: "/", with: "-"))"
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let render = try ProcessRunner.run("kubectl", ["kustomize", Self.root.appendingPathComponent("docker/k8s/\(directory)").path])
        #expect(render.status == 0, "\(render.stderr)")
        try render.stdout.write(toFile: "\(scratch)/rendered.yaml", atomically: true, encoding: .utf8)
        let validate = try ProcessRunner.run("python3", ["-m", "kubernetes_validate", "--strict", "-k", "1.32.0", "\(scratch)/rendered.yaml"])
        #expect(validate.status == 0, "\(validate.stdout)\(validate.stderr)")
        for kind in ["Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler", "ConfigMap", "Secret"] {
            #expect(validate.stdout.contains("passed for resource \(kind.lowercased())/"), "\(kind) not validated: \(validate.stdout)")
        }
        // The pgbouncer.ini the ConfigMap carries, with the auth file where the Secret would be mounted.
        let extract = try ProcessRunner.run("python3", ["-c", """
            import sys, yaml
            for doc in yaml.safe_load_all(open(sys.argv[1])):
                if doc and doc["kind"] == "ConfigMap": print(doc["data"]["pgbouncer.ini"])
                if doc and doc["kind"] == "Secret":
                    import base64; open(sys.argv[2], "wb").write(base64.b64decode(doc["data"]["userlist.txt"]))
            """, "\(scratch)/rendered.yaml", "\(scratch)/userlist.txt"])
        #expect(extract.status == 0, "\(extract.stderr)")
        let ini = extract.stdout.replacingOccurrences(of: "/etc/shoal/userlist/userlist.txt", with: "\(scratch)/userlist.txt")
        try ini.write(toFile: "\(scratch)/pgbouncer.ini", atomically: true, encoding: .utf8)
        let check = try ProcessRunner.run(Self.shoal, ["--check", "\(scratch)/pgbouncer.ini"])
        #expect(check.status == 0, "\(check.stdout)\(check.stderr)")
        #expect(check.stdout.contains("pool_mode transaction"))
    }

    /// The runtime image built here as docker/Dockerfile lays it out (no registry to pull a base image from):
    /// FROM scratch with the build stage's binary and its libraries, run by buildah as uid 10001 on the host
    /// network, serving psql.
    @Test func scratchImageBuiltWithBuildahServesPsql() async throws {
        guard getuid() == 0 else { throw TestFailure("buildah with vfs storage runs as root here (CI runs as root)") }
        let release = try Self.imageBinary()
        let image = "localhost/shoal-test:\(getpid())"
        let built = try ProcessRunner.run("bash", [Self.root.appendingPathComponent("docker/build-scratch-image.sh").path, release, image], timeout: 300)
        #expect(built.status == 0, "\(built.stdout)\(built.stderr)")
        print("image: \(built.stdout.split(separator: "\n").last ?? "")")
        defer { _ = try? ProcessRunner.run("buildah", ["--storage-driver", "vfs", "rmi", "-f", image]) }
        let inspect = try ProcessRunner.run("buildah", ["--storage-driver", "vfs", "inspect", "--type", "image", "--format",
                                                        "{{.OCIv1.Config.User}} {{.OCIv1.Config.Entrypoint}} {{.OCIv1.Config.Cmd}} {{.Docker.Config.StopSignal}}", image])
        #expect(inspect.stdout.contains("10001:10001 [/usr/bin/shoal] [/etc/shoal/pgbouncer.ini] SIGTERM"), "\(inspect.stdout)\(inspect.stderr)")

        let config = "/tmp/shoal-image-\(getpid())"
        try FileManager.default.createDirectory(atPath: config, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: config) }
        let port = freePort()
        try """
            [databases]
            postgres = host=127.0.0.1 port=\(TestPostgres.shared.port) dbname=postgres
            [pgbouncer]
            listen_addr = 127.0.0.1
            listen_port = \(port)
            unix_socket_dir = /tmp
            auth_type = scram-sha-256
            auth_file = /etc/shoal/userlist.txt
            pool_mode = transaction
            """.write(toFile: "\(config)/pgbouncer.ini", atomically: true, encoding: .utf8)
        try "\"postgres\" \"\(TestPostgres.password)\"\n".write(toFile: "\(config)/userlist.txt", atomically: true, encoding: .utf8)
        chmod(config, 0o755)
        let container = try ProcessRunner.run("buildah", ["--storage-driver", "vfs", "from", image]).stdout
            .trimmingCharacters(in: .whitespacesAndNewlines)
        defer { _ = try? ProcessRunner.run("buildah", ["--storage-driver", "vfs", "rm", container]) }
        let pid = try ProcessRunner.spawn(try ProcessRunner.which("buildah"),
                                          ["--storage-driver", "vfs", "run", "--isolation", "chroot", "--network", "host",
                                           "-v", "\(config):/etc/shoal:ro", container, "--", "/usr/bin/shoal", "/etc/shoal/pgbouncer.ini"],
                                          stdout: "\(config)/run.log", stderr: "\(config)/run.log")
        defer {
            kill(pid, SIGTERM)
            _ = ProcessRunner.exitCode(of: pid, within: 10)
        }
        try waitUntil("the containerised Shoal listens", timeout: 30) {
            (try? PQConnection("host=127.0.0.1 port=\(port) user=postgres dbname=postgres password=\(TestPostgres.password)")) != nil
        }
        let psql = try ProcessRunner.run("psql", ["-X", "-At", "-h", "127.0.0.1", "-p", "\(port)", "-U", "postgres", "-d", "postgres",
                                                  "-c", "SELECT 'served through the image', current_setting('server_version_num')::int >= 150000"],
                                         environment: ["PGPASSWORD": TestPostgres.password])
        #expect(psql.status == 0 && psql.stdout.contains("served through the image|t"), "\(psql.stdout)\(psql.stderr)")
        // Not root inside: the Unix socket Shoal made in the container's /tmp belongs to uid 10001.
        let mount = try ProcessRunner.run("buildah", ["--storage-driver", "vfs", "mount", container]).stdout
            .trimmingCharacters(in: .whitespacesAndNewlines)
        let owner = try FileManager.default.attributesOfItem(atPath: "\(mount)/tmp/.s.PGSQL.\(port)")[.ownerAccountID] as? Int
        #expect(owner == 10001, "socket owner \(String(describing: owner)); log: \((try? String(contentsOfFile: "\(config)/run.log", encoding: .utf8)) ?? "")")
    }

    @Test func checkReportsFileLineAndKey() throws {
        let file = "/tmp/shoal-check-\(getpid()).ini"
        defer { unlink(file) }
        try "[databases]\nmoodle = host=db\n\n[pgbouncer]\nlisten_port = 6432\ndefault_pool_size = lots\n".write(toFile: file, atomically: true, encoding: .utf8)
        let check = try ProcessRunner.run(Self.shoal, ["--check", file])
        #expect(check.status == 1)
        #expect(check.stderr.contains("\(file):6") && check.stderr.contains("default_pool_size"), "\(check.stderr)")
        for example in ["minimal.ini", "moodle-transaction.ini", "per-department.ini", "aurora-replicas.ini"] {
            // The examples parse (their auth files and certificates are not on this machine: the only complaints allowed).
            let run = try ProcessRunner.run(Self.shoal, ["--check", Self.root.appendingPathComponent("conf/examples/\(example)").path])
            #expect(run.stdout.contains(": ok"), "\(example): \(run.stderr)")
            #expect(run.stderr.split(separator: "\n").allSatisfy { $0.contains("cannot read") }, "\(example): \(run.stderr)")
        }
    }

    @Test func debianPackageInstallsStartsUnderNotifySocketAndPurges() async throws {
        guard getuid() == 0 else { throw TestFailure("installing a package needs root (CI runs as root)") }
        let scratch = "/tmp/shoal-deb-\(getpid())"
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        // A binary that needs the Swift toolchain's libraries is refused: no Debian host has them.
        let dynamic = try ProcessRunner.run("bash", [Self.root.appendingPathComponent("packaging/deb/build-deb.sh").path, Self.shoal, scratch], timeout: 300)
        #expect(dynamic.status != 0 && dynamic.stderr.contains("libswiftCore.so"), "\(dynamic.stdout)\(dynamic.stderr)")
        let build = try ProcessRunner.run("bash", [Self.root.appendingPathComponent("packaging/deb/build-deb.sh").path, try Self.imageBinary(), scratch],
                                          timeout: 300)
        #expect(build.status == 0, "\(build.stderr)")
        let package = build.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        let contents = try ProcessRunner.run("dpkg-deb", ["--contents", package])
        for path in ["./usr/bin/shoal", "./lib/systemd/system/shoal.service", "./etc/shoal/shoal.ini", "./usr/lib/sysctl.d/60-shoal.conf",
                     "./lib/systemd/system/shoal@.service"] {
            #expect(contents.stdout.contains(path), "\(path) missing: \(contents.stdout)")
        }
        let depends = try ProcessRunner.run("dpkg-deb", ["-f", package, "Depends"]).stdout
        #expect(depends.contains("libc6") && depends.contains("libstdc++6") && depends.contains("libgcc-s1"), "\(depends)")

        // The packaged binary runs in a root that holds only it and the libraries Depends: names — no Swift toolchain.
        let bare = "\(scratch)/bare"
        #expect(try ProcessRunner.run("dpkg-deb", ["-x", package, bare]).status == 0)
        let libraries = try ProcessRunner.run("ldd", ["\(bare)/usr/bin/shoal"]).stdout
        for library in libraries.split(separator: "\n").compactMap({ $0.split(whereSeparator: \.isWhitespace).first(where: { $0.hasPrefix("/") }) }) {
            #expect(try ProcessRunner.run("cp", ["--parents", "-L", String(library), bare]).status == 0)
        }
        #expect(!libraries.contains("swift") && !libraries.contains("Foundation") && !libraries.contains("dispatch"), "\(libraries)")
        // /proc as every host and container has it (Swift reads the command line from /proc/self/cmdline).
        try FileManager.default.createDirectory(atPath: "\(bare)/proc", withIntermediateDirectories: true)
        #expect(try ProcessRunner.run("mount", ["-t", "proc", "proc", "\(bare)/proc"]).status == 0)
        defer { _ = try? ProcessRunner.run("umount", ["\(bare)/proc"]) }
        let chrooted = try ProcessRunner.run("chroot", [bare, "/usr/bin/shoal", "--version"])
        #expect(chrooted.status == 0 && chrooted.stdout.hasPrefix("PgBouncer"), "\(chrooted.stdout)\(chrooted.stderr)")
        let install = try ProcessRunner.run("dpkg", ["-i", package])
        #expect(install.status == 0, "\(install.stdout)\(install.stderr)")
        defer { _ = try? ProcessRunner.run("dpkg", ["--purge", "shoal"]) }
        #expect(FileManager.default.isExecutableFile(atPath: "/usr/bin/shoal"))
        #expect((try ProcessRunner.run("getent", ["passwd", "shoal"])).status == 0, "postinst made the shoal user")
        // The unit's syntax, as systemd reads it.
        let verify = try ProcessRunner.run("systemd-analyze", ["verify", "/lib/systemd/system/shoal.service"])
        #expect(!verify.stderr.contains("shoal.service:"), "\(verify.stderr)")
        // The template for restarts that refuse nobody: the same unit, whose runtime directory outlives an instance.
        let template = try String(contentsOfFile: "/lib/systemd/system/shoal@.service", encoding: .utf8)
        #expect(template.contains("RuntimeDirectoryPreserve=yes") && template.contains("(instance %i)"))
        let verifyTemplate = try ProcessRunner.run("systemd-analyze", ["verify", "/lib/systemd/system/shoal@.service"])
        #expect(!verifyTemplate.stderr.contains("shoal@"), "\(verifyTemplate.stderr)")

        // Start the installed binary the way systemd would, with a notify socket the test listens on.
        let notify = try NotifySocket(path: "\(scratch)/notify")
        let port = freePort()
        try OperationsTests.ShoalProcess.config(directory: scratch, port: port, poolSize: 2)
            .write(toFile: "\(scratch)/shoal.ini", atomically: true, encoding: .utf8)
        try "\"postgres\" \"\(TestPostgres.password)\"\n".write(toFile: "\(scratch)/userlist.txt", atomically: true, encoding: .utf8)
        let pid = try ProcessRunner.spawn("/usr/bin/shoal", ["-q", "\(scratch)/shoal.ini"], environment: ["NOTIFY_SOCKET": notify.path],
                                          stdout: "\(scratch)/out", stderr: "\(scratch)/err")
        defer { kill(pid, SIGKILL); _ = ProcessRunner.exitCode(of: pid, within: 2) }
        let ready = notify.receive(timeout: 20)
        #expect(ready?.contains("READY=1") == true, "\(String(describing: ready))")
        let client = try PQConnection("host=127.0.0.1 port=\(port) user=postgres dbname=postgres password=\(TestPostgres.password)")
        #expect(try client.scalar("select 'through the packaged binary'") == "through the packaged binary")
        kill(pid, SIGHUP)
        #expect(notify.receive(timeout: 10)?.contains("RELOADING=1") == true)
        #expect(notify.receive(timeout: 10)?.contains("READY=1") == true)
        kill(pid, SIGTERM)
        #expect(notify.receive(timeout: 10)?.contains("STOPPING=1") == true)
        _ = consume client
        #expect(ProcessRunner.exitCode(of: pid, within: 10) == 0)

        let purge = try ProcessRunner.run("dpkg", ["--purge", "shoal"])
        #expect(purge.status == 0, "\(purge.stdout)\(purge.stderr)")
        #expect(!FileManager.default.fileExists(atPath: "/usr/bin/shoal"))
        #expect(!FileManager.default.fileExists(atPath: "/etc/shoal/shoal.ini"))
        #expect((try ProcessRunner.run("getent", ["passwd", "shoal"])).status != 0, "postrm removed the shoal user")
    }
}

/// A datagram socket standing in for systemd's NOTIFY_SOCKET.
final class NotifySocket {
    let path: String
    private let fd: Int32

    init(path: String) throws {
        self.path = path
        unlink(path)
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (index, byte) in path.utf8.enumerated() { raw[index] = byte }
        }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard bound == 0 else { throw TestFailure("cannot bind \(path)") }
    }

    /// The next message, or nil after `timeout` seconds.
    func receive(timeout: Int) -> String? {
        var wait = timeval(tv_sec: timeout, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &wait, socklen_t(MemoryLayout<timeval>.size))
        var buffer = [UInt8](repeating: 0, count: 4096)
        let count = recv(fd, &buffer, buffer.count, 0)
        return count > 0 ? String(decoding: buffer[0..<count], as: UTF8.self) : nil
    }

    deinit {
        close(fd)
        unlink(path)
    }
}
