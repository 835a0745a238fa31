#!/usr/bin/env python3
"""`make image`: the operator's OCI image, made without a base image, a registry or a container
engine, and reproducible (the same binary gives the same image digest).

One layer: the `dvo` binary at /usr/local/bin/dvo, the shared libraries `ldd` lists for it and
the dynamic loader (at the paths they have here), a CA bundle, and /etc/passwd and /etc/group
naming the non-root user 65532. The image config runs as 65532:65532 with ENTRYPOINT
["/usr/local/bin/dvo"] and CMD ["run"], as the Dockerfile's image does (a test compares them).

With --static, the image of one static binary instead (the test node's pause and workload
images): just that file at /DEST, its ENTRYPOINT, the same user and files in /etc.

Output: an OCI image layout in a tar (index.json, oci-layout, blobs/sha256/...), which
`ctr -n k8s.io images import` and `skopeo copy oci-archive:...` take.

Usage: scripts/image.py --binary target/release/dvo --out target/oci/dvo-operator.tar
                        [--name localhost/dvo-operator:0.1.0]
       scripts/image.py --static bin/pause --dest pause --name localhost/pause:3.10 --out pause.tar
"""

import argparse
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import struct
import tarfile
import zlib

BINARY_PATH = "usr/local/bin/dvo"
USER = "65532:65532"
CMD = ["run"]
PORTS = ["8081/tcp", "9443/tcp"]
CA_BUNDLES = ["/etc/ssl/certs/ca-certificates.crt"]
PASSWD = "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n"
GROUP = "root:x:0:\nnonroot:x:65532:\n"
# Every timestamp in the image (files, gzip header, config): reproducible, as SOURCE_DATE_EPOCH 0.
EPOCH = 0
CREATED = "1970-01-01T00:00:00Z"


def shared_libraries(binary):
    """The absolute paths of the libraries `ldd` lists for `binary`, and its loader."""
    out = subprocess.run(["ldd", binary], check=True, capture_output=True, text=True).stdout
    paths = set()
    for line in out.splitlines():
        hit = re.search(r"(/\S+)\s+\(0x", line)
        if hit:
            paths.add(hit.group(1))
    return sorted(paths)


def layer(binary, dest=BINARY_PATH, static=False):
    """The layer as an uncompressed tar (bytes): entries sorted, owners root (the binary too,
    so the user it runs as cannot change it), fixed times and modes."""
    files = {dest: (open(binary, "rb").read(), 0o755)}
    for lib in [] if static else shared_libraries(binary):
        real = os.path.realpath(lib)
        files[lib.lstrip("/")] = (open(real, "rb").read(), 0o755)
    bundle = next((b for b in CA_BUNDLES if os.path.exists(b)), None)
    if bundle is None:
        sys.exit("image: no CA bundle found (install ca-certificates)")
    files["etc/ssl/certs/ca-certificates.crt"] = (open(bundle, "rb").read(), 0o644)
    files["etc/passwd"] = (PASSWD.encode(), 0o644)
    files["etc/group"] = (GROUP.encode(), 0o644)
    dirs = {"tmp", "home", "home/nonroot"}
    for path in files:
        parts = path.split("/")[:-1]
        dirs.update("/".join(parts[: i + 1]) for i in range(len(parts)))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(dirs | set(files)):
            info = tarfile.TarInfo(path)
            info.mtime = EPOCH
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if path in files:
                data, mode = files[path]
                info.size, info.mode = len(data), mode
                tar.addfile(info, io.BytesIO(data))
            else:
                info.type = tarfile.DIRTYPE
                info.mode = 0o1777 if path == "tmp" else 0o755
                if path == "home/nonroot":
                    info.uid = info.gid = 65532
                tar.addfile(info)
    return buf.getvalue()


def gzip_fixed(data):
    """gzip with a header of our own (no name, mtime 0, OS 255 'unknown'): Python versions
    write different header bytes, and the digest must not depend on them."""
    deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
    body = deflate.compress(data) + deflate.flush()
    header = b"\x1f\x8b\x08\x00" + struct.pack("<I", EPOCH) + b"\x00\xff"
    return header + body + struct.pack("<II", zlib.crc32(data) & 0xFFFFFFFF, len(data) & 0xFFFFFFFF)


def blob(data):
    return "sha256:" + hashlib.sha256(data).hexdigest(), data


def image(binary, name, dest=BINARY_PATH, static=False):
    """The blobs (digest -> bytes) and index.json of the image."""
    raw = layer(binary, dest, static)
    compressed = gzip_fixed(raw)
    layer_digest, layer_data = blob(compressed)
    config = {
        "created": CREATED,
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "User": USER,
            "Entrypoint": ["/" + dest],
            "Cmd": [] if static else CMD,
            "Env": ["PATH=/usr/local/bin:/usr/bin:/bin", "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"],
            "WorkingDir": "/home/nonroot",
            "ExposedPorts": {} if static else {p: {} for p in PORTS},
        },
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(raw).hexdigest()]},
        "history": [{"created": CREATED, "created_by": "scripts/image.py"}],
    }
    config_digest, config_data = blob(json.dumps(config, sort_keys=True, separators=(",", ":")).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": len(config_data)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_digest, "size": len(layer_data)}],
    }
    manifest_digest, manifest_data = blob(json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode())
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": len(manifest_data),
            "annotations": {"org.opencontainers.image.ref.name": name, "io.containerd.image.name": name},
        }],
    }
    blobs = {layer_digest: layer_data, config_digest: config_data, manifest_digest: manifest_data}
    sizes = {"layer_digest": layer_digest, "layer_bytes_uncompressed": len(raw), "layer_bytes_compressed": len(layer_data)}
    return blobs, index, manifest_digest, sizes


def write(out, blobs, index):
    entries = {
        "oci-layout": json.dumps({"imageLayoutVersion": "1.0.0"}).encode(),
        "index.json": json.dumps(index, sort_keys=True, separators=(",", ":")).encode(),
    }
    for digest, data in blobs.items():
        entries["blobs/sha256/" + digest.split(":", 1)[1]] = data
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = out + ".tmp"
    with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in ("blobs", "blobs/sha256"):
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, EPOCH
            tar.addfile(info)
        for path in sorted(entries):
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = len(entries[path]), 0o644, EPOCH
            tar.addfile(info, io.BytesIO(entries[path]))
    os.replace(tmp, out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary")
    ap.add_argument("--static", help="a static binary: the image holds it alone (no libraries)")
    ap.add_argument("--dest", default=BINARY_PATH, help="its path in the image (no leading /)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--name", default="localhost/dvo-operator:0.1.0")
    args = ap.parse_args()
    if bool(args.binary) == bool(args.static):
        sys.exit("image: give --binary (the operator) or --static (one static binary)")
    blobs, index, digest, sizes = image(args.binary or args.static, args.name, args.dest, bool(args.static))
    write(args.out, blobs, index)
    print(json.dumps(dict({"image": args.name, "archive": args.out, "manifest_digest": digest}, **sizes)))


if __name__ == "__main__":
    main()
