import Crypto

/// PostgreSQL's MD5 password scheme: `"md5" + md5hex(md5hex(password + user) + salt)`.
public enum MD5Password {
    public static func hex(_ bytes: some Sequence<UInt8>) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        for byte in bytes {
            out.append(digits[Int(byte >> 4)])
            out.append(digits[Int(byte & 0x0F)])
        }
        return String(decoding: out, as: UTF8.self)
    }

    static func md5hex(_ bytes: [UInt8]) -> String {
        hex(Insecure.MD5.hash(data: bytes))
    }

    /// The stored form PostgreSQL keeps in pg_authid: `md5` + md5hex(password + user).
    public static func storedHash(user: String, password: String) -> String {
        "md5" + md5hex(Array(password.utf8) + Array(user.utf8))
    }

    /// What a client sends in answer to AuthenticationMD5Password, from the stored hash.
    public static func response(storedHash: String, salt: [UInt8]) -> String {
        "md5" + md5hex(Array(storedHash.dropFirst(3).utf8) + salt)
    }

    public static func response(user: String, password: String, salt: [UInt8]) -> String {
        response(storedHash: storedHash(user: user, password: password), salt: salt)
    }

    public static func isStoredHash(_ secret: String) -> Bool {
        secret.count == 35 && secret.hasPrefix("md5") && secret.dropFirst(3).allSatisfy { $0.isHexDigit && !$0.isUppercase }
    }
}
