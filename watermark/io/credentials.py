"""Content Credentials (C2PA) in the images ringmark writes and reads, through ``c2pa-python``
(the C2PA reference implementation's bindings): ``embed --c2pa`` signs a manifest into each PNG,
``verify`` reads and validates the manifest an image carries, and the generation log keeps each
signed manifest, so that an image whose metadata was stripped gets it back through the watermark
(a "durable" credential: the watermark is its soft binding; docs/how-to/credentials.md).

What the library lacks and this file adds: the manifest ringmark signs (``manifest``), a signer
from PEM files with the algorithm read off the key, and an untrusted test chain (``test_chain``)
for demos and tests, made with ``cryptography``.
"""

from __future__ import annotations

import base64
import datetime
import functools
import io
import os
import struct
from dataclasses import dataclass
from pathlib import Path

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SOFT_BINDING_ALG = "org.ringmark.noise-ring.1"  # the watermark, as the soft-binding assertion names it
GENERATION_LABEL = "org.ringmark.generation"  # ringmark's own assertion: key id, image id, model
SOURCE_TYPE = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
ENV_TRUST = "RINGMARK_C2PA_TRUST"  # a PEM file of trusted root certificates: credentials chaining to one are "trusted"
UNTRUSTED = "signingCredential.untrusted"  # no trust list was given: not a defect of the manifest
HARD_BINDING = "assertion.dataHash.mismatch"  # the pixels are not those signed


class CredentialsError(Exception):
    """Signing credentials cannot be used, or c2pa-python is missing (one-line message)."""


def _c2pa():
    try:
        import c2pa
    except ImportError:
        raise CredentialsError("Content Credentials need c2pa-python: pip install c2pa-python") from None
    return c2pa


@dataclass(frozen=True, kw_only=True)
class Credentials:
    """What an image's C2PA manifest says and whether it holds up."""

    status: str  # "valid" (signature and hard binding hold), "trusted" (also chains to a root in
    # RINGMARK_C2PA_TRUST), "invalid", "absent"
    why: str | None = None  # invalid: the failed checks, in words
    generator: str | None = None  # the claim generator (name and version)
    signer: str | None = None  # the signing certificate's subject (common name, organisation)
    key_id: str | None = None  # ringmark's soft binding: the watermark key the image claims to carry
    image_id: str | None = None  # ringmark's assertion: the generation-log id of the image


ABSENT = Credentials(status="absent")
WHY = {  # C2PA validation codes, said plainly (the others are shown as they are)
    HARD_BINDING: "the pixels changed since signing (hard binding fails)",
    "claimSignature.mismatch": "the signature does not match the claim",
    "signingCredential.expired": "the signing certificate had expired",
    "signingCredential.invalid": "the signing certificate is not valid for signing",
}


def read(source: str | os.PathLike | bytes, fmt: str) -> Credentials:
    """The Content Credentials of an image file (a path or its bytes) of format ``fmt`` (Pillow's
    name: "PNG", "JPEG"), validated; ``ABSENT`` when it carries none or its format cannot hold one."""
    c2pa = _c2pa()
    mime = f"image/{ {'MPO': 'jpeg'}.get(fmt, fmt).lower()}"  # Pillow names a multi-picture JPEG "MPO"
    if mime not in _supported():
        return ABSENT
    data = bytes(source) if isinstance(source, (bytes, bytearray)) else Path(source).read_bytes()
    try:
        reader = c2pa.Reader.try_create(mime, io.BytesIO(data), context=_context(os.environ.get(ENV_TRUST)))
    except c2pa.C2paError as e:  # a manifest the library cannot parse: one is there, and it does not hold
        return Credentials(status="invalid", why=_first_line(e))
    if reader is None:
        return ABSENT
    with reader:
        return summarise(reader)


@functools.lru_cache(maxsize=4)
def _context(trust: str | None):
    """The reading context: with the trust anchors in the PEM file ``trust`` (``RINGMARK_C2PA_TRUST``,
    read by every process that decodes images: verify, serve's replicas, scan's workers), else none."""
    c2pa = _c2pa()
    if not trust:
        return None
    anchors = _read(trust, f"trust anchors (${ENV_TRUST})").decode(errors="replace")
    return c2pa.Context.from_dict({"trust": {"trust_anchors": anchors}, "verify": {"verify_trust": True}})


def check_trust() -> None:
    """Raise CredentialsError now (not per image) when ``RINGMARK_C2PA_TRUST`` names no readable PEM
    certificates."""
    trust = os.environ.get(ENV_TRUST)
    if trust:
        from cryptography import x509

        try:
            x509.load_pem_x509_certificates(_read(trust, f"trust anchors (${ENV_TRUST})"))
        except ValueError:
            raise CredentialsError(f"{trust}: ${ENV_TRUST} must name a PEM file of certificates") from None


@functools.cache
def _supported() -> frozenset[str]:
    return frozenset(_c2pa().Reader.get_supported_mime_types())


def read_detached(manifest: bytes, image: bytes, fmt: str) -> Credentials:
    """A manifest store kept apart from its image (``verify --credentials-out``), validated against
    ``image`` (its hard binding holds only for the image it was signed into)."""
    c2pa = _c2pa()
    with c2pa.Reader(f"image/{fmt.lower()}", io.BytesIO(image), manifest_data=manifest) as reader:
        return summarise(reader)


def read_store(manifest: bytes) -> Credentials:
    """A manifest store on its own (a ``.c2pa`` file ``verify --credentials-out`` wrote): its
    signature and assertions validated; its hard binding is to the image it was signed into, which
    is not here, so that one check is left out (say so where it is shown)."""
    c2pa = _c2pa()
    try:
        with c2pa.Reader("application/c2pa", io.BytesIO(manifest)) as reader:
            return summarise(reader, ignore=(UNTRUSTED, HARD_BINDING))
    except c2pa.C2paError as e:
        return Credentials(status="invalid", why=_first_line(e))


def summarise(reader, ignore: tuple[str, ...] = (UNTRUSTED,)) -> Credentials:
    """``Credentials`` from an open ``c2pa.Reader``; ``ignore``: validation codes that are no
    defect here (no trust list was given; the asset is elsewhere)."""
    state = (reader.get_validation_state() or "").lower()
    failures = [f.get("code", "") for f in (reader.get_validation_results() or {}).get("activeManifest", {})
                .get("failure", [])]
    manifest = reader.get_active_manifest() or {}
    info = (manifest.get("claim_generator_info") or [{}])[0]
    generator = " ".join(str(info[k]) for k in ("name", "version") if info.get(k)) or manifest.get("claim_generator")
    sig = manifest.get("signature_info") or {}
    signer = ", ".join(str(sig[k]) for k in ("common_name", "issuer") if sig.get(k)) or None
    found = {a.get("label"): a.get("data") or {} for a in manifest.get("assertions", [])}
    ours = found.get(GENERATION_LABEL, {})
    serious = [code for code in failures if code not in ignore]
    if state == "trusted":
        status, why = "trusted", None
    elif state in ("valid", "invalid") and not serious:
        status, why = "valid", None
    else:
        status, why = "invalid", "; ".join(dict.fromkeys(WHY.get(c, c) for c in serious)) or f"validation state {state or 'unknown'}"
    return Credentials(status=status, why=why, generator=generator, signer=signer,
                       key_id=_soft_binding(found.get("c2pa.soft-binding")) or ours.get("key_id"),
                       image_id=ours.get("image_id"))


def _soft_binding(data: dict | None) -> str | None:
    """The key id ringmark's soft-binding assertion names (its value, base64), or None."""
    if not data or data.get("alg") != SOFT_BINDING_ALG:
        return None
    try:
        return base64.b64decode(data["blocks"][0]["value"]).decode()
    except (KeyError, IndexError, ValueError, UnicodeDecodeError):
        return None


def png_chunks(png: bytes) -> list[tuple[bytes, bytes]]:
    """A PNG's chunks after its signature, in order: (type, the whole chunk: length, type, data,
    CRC); [] for other bytes. Written here: c2pa-python reads a store but does not hand its bytes back."""
    if not png.startswith(PNG_SIGNATURE):
        return []
    out, pos = [], len(PNG_SIGNATURE)
    while pos + 8 <= len(png):
        (n,) = struct.unpack(">I", png[pos : pos + 4])
        out.append((png[pos + 4 : pos + 8], png[pos : pos + 12 + n]))
        pos += 12 + n
    return out


def embedded_store(png: bytes) -> bytes | None:
    """The C2PA manifest store a PNG carries (its ``caBX`` chunk's data: the bytes ``Signer.sign``
    returned), or None."""
    return next((chunk[8:-4] for kind, chunk in png_chunks(png) if kind == b"caBX"), None)


def manifest(*, title: str, model: str, key_id: str | None, image_id: str, version: str) -> dict:
    """The manifest ``embed --c2pa`` signs into an image: made by a trained model (IPTC's digital
    source type), by ringmark and ``model``; the watermark as its soft binding (key id, never the
    key) and the generation log's id for the image."""
    assertions = [
        {"label": "c2pa.actions.v2", "data": {"actions": [{
            "action": "c2pa.created", "digitalSourceType": SOURCE_TYPE,
            "softwareAgent": {"name": model}, "description": f"generated by the diffusion model {model!r}"}]}},
        {"label": GENERATION_LABEL, "data": {"image_id": image_id, "key_id": key_id, "model": model}},
    ]
    if key_id is not None:  # a clean control (--no-watermark) has no watermark to bind to
        assertions.append({"label": "c2pa.soft-binding", "data": {
            "alg": SOFT_BINDING_ALG, "blocks": [{"scope": {}, "value": base64.b64encode(key_id.encode()).decode()}]}})
    return {"claim_generator_info": [{"name": "ringmark", "version": version}], "title": title,
            "assertions": assertions}


class Signer:
    """Signs PNGs with the provider's certificate chain (PEM, the signing certificate first) and
    private key (PEM): ``--c2pa-cert`` / ``--c2pa-key``, or RINGMARK_C2PA_CERT / RINGMARK_C2PA_KEY."""

    def __init__(self, cert: str | os.PathLike, key: str | os.PathLike):
        self.chain, self.key = _read(cert, "certificate chain"), _read(key, "private key")
        private = _private_key(self.key, key)
        self.alg = _algorithm(private, key)
        _check_pair(self.chain, private, cert, key)  # before any image is made, not at the first signature
        self.context = _c2pa().Context.from_dict({"builder": {"thumbnail": {"enabled": False}}})  # the image is its own

    def sign(self, path: str | os.PathLike, manifest: dict) -> bytes:
        """Sign ``manifest`` into the PNG at ``path`` (replaced in place); returns the manifest store
        as signed (what the generation log keeps)."""
        c2pa = _c2pa()
        path = Path(path)
        tmp = path.with_name(path.name + ".c2pa.tmp")
        signer = c2pa.Signer.from_info(c2pa.C2paSignerInfo(alg=self.alg.encode(), sign_cert=self.chain,
                                                           private_key=self.key, ta_url=None))
        try:
            with c2pa.Builder(manifest, context=self.context) as builder, open(path, "rb") as src, open(tmp, "w+b") as dst:
                data = builder.sign(signer, "image/png", src, dst)
        except c2pa.C2paError as e:
            tmp.unlink(missing_ok=True)
            raise CredentialsError(f"cannot sign {path.name}: {_first_line(e)}") from None
        finally:
            signer.close()
        os.replace(tmp, path)
        return bytes(data)


def _read(path: str | os.PathLike, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise CredentialsError(f"{path}: cannot read the {what} ({e.strerror or e})") from None


def _private_key(pem: bytes, path):
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        return load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as e:
        raise CredentialsError(f"{path}: not an unencrypted PEM private key ({_first_line(e)})") from None


def _check_pair(chain: bytes, key, cert_path, key_path) -> None:
    """Raise CredentialsError unless the chain's first certificate holds the private ``key``'s public key."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    try:
        certs = x509.load_pem_x509_certificates(chain)
    except ValueError:
        raise CredentialsError(f"{cert_path}: not a PEM certificate chain") from None
    public = key.public_key()
    if (certs[0].public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
            != public.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)):
        raise CredentialsError(f"{key_path}: not the private key of {cert_path}'s first certificate")


def _algorithm(key, path) -> str:
    """The C2PA signing algorithm of a private key: ES256/384/512 by curve, PS256 for RSA, Ed25519."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    if isinstance(key, ec.EllipticCurvePrivateKey):
        curves = {"secp256r1": "es256", "secp384r1": "es384", "secp521r1": "es512"}
        if key.curve.name not in curves:
            raise CredentialsError(f"{path}: curve {key.curve.name} is not one C2PA signs with ({', '.join(curves)})")
        return curves[key.curve.name]
    if isinstance(key, rsa.RSAPrivateKey):
        return "ps256"
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "ed25519"
    raise CredentialsError(f"{path}: a {type(key).__name__} cannot sign C2PA manifests (EC P-256/384/521, RSA, Ed25519)")


def test_chain(folder: str | os.PathLike, force: bool = False) -> tuple[Path, Path]:
    """An UNTRUSTED certificate chain for demos and tests: a root and a signing certificate
    (EC P-256, one year) whose names say so, written as ``folder/chain.pem`` and ``folder/signer.key``
    (owner-only). Returns their paths. No C2PA validator trusts it; a provider signs with a
    certificate from a CA on the C2PA trust list."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder = Path(folder)
    cert_path, key_path = folder / "chain.pem", folder / "signer.key"
    for p in (cert_path, key_path):
        if p.exists() and not force:
            raise CredentialsError(f"{p}: exists; use --force to overwrite")
    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                          x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ringmark test chain (UNTRUSTED)")])

    def usage(sign_certs: bool):
        return x509.KeyUsage(digital_signature=not sign_certs, content_commitment=False, key_encipherment=False,
                             data_encipherment=False, key_agreement=False, key_cert_sign=sign_certs,
                             crl_sign=sign_certs, encipher_only=False, decipher_only=False)

    root_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    valid = dict(not_valid_before=now - datetime.timedelta(days=1), not_valid_after=now + datetime.timedelta(days=365))
    root = (x509.CertificateBuilder(**valid).subject_name(name("ringmark test root")).issuer_name(name("ringmark test root"))
            .public_key(root_key.public_key()).serial_number(x509.random_serial_number())
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(usage(True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(root_key.public_key()), critical=False)
            .sign(root_key, hashes.SHA256()))
    leaf = (x509.CertificateBuilder(**valid).subject_name(name("ringmark test signer")).issuer_name(root.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(usage(False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()), critical=False)
            .sign(root_key, hashes.SHA256()))
    folder.mkdir(parents=True, exist_ok=True)
    cert_path.write_bytes(leaf.public_bytes(serialization.Encoding.PEM) + root.public_bytes(serialization.Encoding.PEM))
    key_path.unlink(missing_ok=True)
    fd = os.open(key_path, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return cert_path, key_path


def described(c: Credentials) -> str:
    """One line for the table and the report: "valid, ringmark 0.1.0, signed by ..."."""
    parts = [c.status + (f" ({c.why})" if c.why else "")]
    parts += [p for p in (c.generator, c.signer and f"signed by {c.signer}") if p]
    return ", ".join(parts)


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__

