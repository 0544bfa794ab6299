import Foundation
@testable import PostgresWire
import Testing

/// `cert` authentication compares the login's user name with the client certificate's common name.
@Suite struct CertificateSubjectTests {
    // openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/O=Shoal/CN=first/CN=alice"
    static let twoCommonNames = Array(Data(base64Encoded: "MIIBtDCCAVugAwIBAgIUWDoIoPuJjDSWOepPvbIzsY2uvmUwCgYIKoZIzj0EAwIwMDEOMAwGA1UECgwFU2hvYWwxDjAMBgNVBAMMBWZpcnN0MQ4wDAYDVQQDDAVhbGljZTAeFw0yNjEyMDQyMDUwMjlaFw0yNjEyMDUyMDUwMjlaMDAxDjAMBgNVBAoMBVNob2FsMQ4wDAYDVQQDDAVmaXJzdDEOMAwGA1UEAwwFYWxpY2UwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAATJhH/uc+h1XKVJhGrTZA6/Q6eGHL7+wCr/86FTsCaXTmYOTmzYH2qcy2JIOlz273b8o+5UzAmBTHSMeKGF/EXto1MwUTAdBgNVHQ4EFgQU3wHmz7AUKBYstJVYp8wrJnqYj4gwHwYDVR0jBBgwFoAU3wHmz7AUKBYstJVYp8wrJnqYj4gwDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQDAgNHADBEAiAc/Irc4A6G/Mj5mot+W9xV5HUxiahSDPfV8u58mUuYMAIgEWksyW3zzbcXHY9i6XV4dMA8XrVXPrPaH805D6/rmVg=")!)
    // The same with -subj "/O=Shoal": no common name at all.
    static let noCommonName = Array(Data(base64Encoded: "MIIBdDCCARugAwIBAgIUD+sEM/s0HiVPsnDIag6JUEtoz+owCgYIKoZIzj0EAwIwEDEOMAwGA1UECgwFU2hvYWwwHhcNMjYxMjA0MjA1MDI5WhcNMjYxMjA1MjA1MDI5WjAQMQ4wDAYDVQQKDAVTaG9hbDBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABK0E3+ne9NxdQS7Bjj1MJO0vIq0xOumeOkpSJa2gmtSthukOYHL8yg93rm2R1fdci90LimSWUTj23JjStbFj8rSjUzBRMB0GA1UdDgQWBBTY3ZYJ4ryMzddQUB2YDUnqiMLIojAfBgNVHSMEGDAWgBTY3ZYJ4ryMzddQUB2YDUnqiMLIojAPBgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0cAMEQCICpyB2zXQH8Q8sz5zt8w2QzUGrefBS0giJL2YrgblGVpAiBCPTlBwunH+wVFdl3NquKuCmJUbBzH9ZDCFLoeCdHwKw==")!)

    @Test func theLastCommonNameOfTheSubjectIsTheName() {
        // The issuer carries the same names; only the subject's count.
        #expect(CertificateSubject.commonName(der: Self.twoCommonNames) == "alice")
        #expect(CertificateSubject.commonName(der: Self.noCommonName) == nil)
    }

    @Test func brokenBytesGiveNoName() {
        let der = Self.twoCommonNames
        // Every truncation, and a length that runs past the end, is refused rather than read out of bounds.
        for length in stride(from: 0, to: der.count - 80, by: 7) {
            #expect(CertificateSubject.commonName(der: Array(der[..<length])) == nil)
        }
        var lying = der
        lying[1] = 0x84
        #expect(CertificateSubject.commonName(der: lying) == nil)
    }

    @Test func bmpStringsAreDecoded() {
        #expect(CertificateSubject.decodeString(tag: 0x1E, [0x00, 0x61, 0x00, 0xE9][...]) == "aé")
        #expect(CertificateSubject.decodeString(tag: 0x1E, [0x00][...]) == nil)
        #expect(CertificateSubject.decodeString(tag: 0x04, [0x61][...]) == nil) // an OCTET STRING is no name
    }
}
