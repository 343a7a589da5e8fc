#!/usr/bin/env python3
"""Makes the TEST-ONLY certificate chains in this directory. Nothing here is AMD's or Intel's.

Tests use them where real evidence cannot show a check: a real report or quote is re-signed
by these chains (and the verifier told to trust their roots, as go-sev-guest's and
go-tdx-guest's TrustedRoots options allow), so a field can be changed, a TCB status set, or
a certificate revoked. Every subject says "TEST ONLY".

  amd/    ark.pem (RSA, self-signed, RSASSA-PSS SHA-384 salt 48 as AMD signs),
          ask.pem (CN SEV-Milan, signed by ark), vcek.der (CN SEV-VCEK, P-384, every AMD
          extension copied from the virtee Milan VCEK so its TCB and hwID are the real
          report's), vcek.pk8 (its private key, PKCS#8), and CRLs signed by ark:
          crl.der (nothing revoked), crl-ask-revoked.der (the ASK revoked),
          crl-stale.der (nextUpdate 2021-01-01).
  intel/  root.pem (CN Intel SGX Root CA, P-256, self-signed), pck-ca.pem (CN Intel SGX PCK
          Platform CA), pck.pem (CN Intel SGX PCK Certificate, with the SGX extensions
          copied from dcap-qvl's sample quote's PCK certificate, so its FMSPC and TCB are
          real), tcb-signing.pem (CN Intel SGX TCB Signing), their PKCS#8 keys, and CRLs:
          root-crl.der, root-crl-ca-revoked.der (PCK CA revoked), pck-crl.der,
          pck-crl-revoked.der (PCK certificate revoked), pck-crl-stale.der.

Certificates are valid 2020-01-01 to 2049-12-31; CRLs are issued 2020-01-01 and next
updated 2049-12-31 unless stale. Usage (python3 with the `cryptography` package):

  make.py --vcek <sev crate>/tests/certs_data/vcek_milan.der \\
          --tdx-quote <dcap-qvl crate>/sample/tdx_quote
"""

import argparse
import datetime
import os
import struct

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

START = datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc)
END = datetime.datetime(2049, 12, 31, 23, 59, 59, tzinfo=datetime.timezone.utc)
STALE = datetime.datetime(2021, 1, 1, tzinfo=datetime.timezone.utc)
PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA384()), salt_length=48)
SGX_EXTENSIONS = x509.ObjectIdentifier("1.2.840.113741.1.13.1")


def amd_name(cn):
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Engineering"),
        x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
        x509.NameAttribute(NameOID.LOCALITY_NAME, "Santa Clara"),
        x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "CA"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "TEST ONLY, not Advanced Micro Devices"),
        x509.NameAttribute(NameOID.COMMON_NAME, cn),
    ])


def intel_name(cn):
    return x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, cn),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "TEST ONLY, not Intel Corporation"),
        x509.NameAttribute(NameOID.LOCALITY_NAME, "Santa Clara"),
        x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "CA"),
        x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
    ])


def builder(subject, issuer, key, serial, ca):
    b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
         .public_key(key.public_key()).serial_number(serial)
         .not_valid_before(START).not_valid_after(END))
    if ca is not None:
        b = b.add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    return b


def write(path, data):
    with open(path, "wb") as f:
        f.write(data)


def pem(c):
    return c.public_bytes(serialization.Encoding.PEM)


def pk8(key):
    return key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def crl(issuer_cert, issuer_key, revoked, next_update, pss):
    b = (x509.CertificateRevocationListBuilder().issuer_name(issuer_cert.subject)
         .last_update(START).next_update(next_update)
         .add_extension(x509.CRLNumber(1), critical=False))
    for serial in revoked:
        b = b.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(START).build())
    if pss:
        return b.sign(issuer_key, hashes.SHA384(), rsa_padding=PSS).public_bytes(
            serialization.Encoding.DER)
    return b.sign(issuer_key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def make_amd(out, real_vcek):
    os.makedirs(out, exist_ok=True)
    ark_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ask_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    vcek_key = ec.generate_private_key(ec.SECP384R1())
    ark = builder(amd_name("ARK-Milan"), amd_name("ARK-Milan"), ark_key, 0x1001, True).sign(
        ark_key, hashes.SHA384(), rsa_padding=PSS)
    ask = builder(amd_name("SEV-Milan"), ark.subject, ask_key, 0x1002, True).sign(
        ark_key, hashes.SHA384(), rsa_padding=PSS)
    vb = builder(amd_name("SEV-VCEK"), ask.subject, vcek_key, 0x1003, None)
    for e in x509.load_der_x509_certificate(real_vcek).extensions:
        if e.oid.dotted_string.startswith("1.3.6.1.4.1.3704."):
            vb = vb.add_extension(x509.UnrecognizedExtension(e.oid, e.value.value), critical=False)
    vcek = vb.sign(ask_key, hashes.SHA384(), rsa_padding=PSS)
    write(f"{out}/ark.pem", pem(ark))
    write(f"{out}/ask.pem", pem(ask))
    write(f"{out}/vcek.der", vcek.public_bytes(serialization.Encoding.DER))
    write(f"{out}/vcek.pk8", pk8(vcek_key))
    write(f"{out}/crl.der", crl(ark, ark_key, [], END, True))
    write(f"{out}/crl-ask-revoked.der", crl(ark, ark_key, [ask.serial_number], END, True))
    write(f"{out}/crl-stale.der", crl(ark, ark_key, [], STALE, True))


def pck_from_quote(quote):
    """The PCK leaf certificate of a v4 TDX quote (the first PEM block of its chain)."""
    sig_len = struct.unpack_from("<I", quote, 48 + 584)[0]
    start = 48 + 584 + 4
    data = quote[start:start + sig_len]
    chain = data[data.index(b"-----BEGIN CERTIFICATE-----"):]
    return x509.load_pem_x509_certificate(chain.split(b"-----END CERTIFICATE-----")[0]
                                          + b"-----END CERTIFICATE-----\n")


def make_intel(out, real_quote):
    os.makedirs(out, exist_ok=True)
    keys = {n: ec.generate_private_key(ec.SECP256R1())
            for n in ["root", "pck-ca", "pck", "tcb-signing"]}
    sha = hashes.SHA256()
    root = builder(intel_name("Intel SGX Root CA"), intel_name("Intel SGX Root CA"),
                   keys["root"], 0x2001, True).sign(keys["root"], sha)
    ca = builder(intel_name("Intel SGX PCK Platform CA"), root.subject, keys["pck-ca"], 0x2002,
                 True).sign(keys["root"], sha)
    tcb = builder(intel_name("Intel SGX TCB Signing"), root.subject, keys["tcb-signing"], 0x2003,
                  False).sign(keys["root"], sha)
    real_pck = pck_from_quote(real_quote)
    sgx = real_pck.extensions.get_extension_for_oid(SGX_EXTENSIONS).value.value
    pck = (builder(intel_name("Intel SGX PCK Certificate"), ca.subject, keys["pck"], 0x2004, False)
           .add_extension(x509.UnrecognizedExtension(SGX_EXTENSIONS, sgx), critical=False)
           .sign(keys["pck-ca"], sha))
    for name, c in [("root", root), ("pck-ca", ca), ("pck", pck), ("tcb-signing", tcb)]:
        write(f"{out}/{name}.pem", pem(c))
    for name in ["pck", "tcb-signing"]:
        write(f"{out}/{name}.pk8", pk8(keys[name]))
    write(f"{out}/root-crl.der", crl(root, keys["root"], [], END, False))
    write(f"{out}/root-crl-ca-revoked.der", crl(root, keys["root"], [ca.serial_number], END, False))
    write(f"{out}/pck-crl.der", crl(ca, keys["pck-ca"], [], END, False))
    write(f"{out}/pck-crl-revoked.der", crl(ca, keys["pck-ca"], [pck.serial_number], END, False))
    write(f"{out}/pck-crl-stale.der", crl(ca, keys["pck-ca"], [], STALE, False))


def main():
    a = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_argument("--vcek", required=True)
    a.add_argument("--tdx-quote", required=True)
    args = a.parse_args()
    here = os.path.dirname(os.path.abspath(__file__))
    with open(args.vcek, "rb") as f:
        make_amd(f"{here}/amd", f.read())
    with open(args.tdx_quote, "rb") as f:
        make_intel(f"{here}/intel", f.read())


if __name__ == "__main__":
    main()
