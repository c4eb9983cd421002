#!/usr/bin/env bash
# Vendor NiiVue for the review page: `bash lgg_jax/review_page/vendor_niivue.sh [VERSION]`.
# Takes dist/index.js (the ES module; dist/index.min.js is a wrapper, not the module)
# from the npm package @niivue/niivue, and writes its version beside it. The tarball
# has no LICENSE file: niivue/LICENSE is the BSD-2-Clause text with the authors its
# package.json names; niivue/THIRD_PARTY.md lists the libraries bundled into
# index.js (from dist/metafile-esm.json) with their licences (from the npm registry).
set -euo pipefail
version="${1:-0.69.0}"
here="$(cd "$(dirname "$0")" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
npm pack --silent "@niivue/niivue@$version" > /dev/null
tar xzf niivue-niivue-"$version".tgz
cp package/dist/index.js "$here/niivue/niivue.js"
python3 - "$version" "$here/niivue" <<'PY'
import json, pathlib, re, subprocess, sys
version, out = sys.argv[1], pathlib.Path(sys.argv[2])
package = json.loads(pathlib.Path("package/package.json").read_text())
assert package["license"] == "BSD-2-Clause", package["license"]
meta = json.loads(pathlib.Path("package/dist/metafile-esm.json").read_text())
bundled = sorted({m.group(1) for i in meta["inputs"] if (m := re.search(r"node_modules/((?:@[^/]+/)?[^/]+)", i))})
rows = []
for name in bundled:
  wanted = package.get("dependencies", {}).get(name, "")
  spec = f"{name}@{wanted}" if wanted else name
  info = json.loads(subprocess.run(["npm", "view", "--json", spec, "version", "license"], check=True,
                                   capture_output=True, text=True).stdout)
  info = info[-1] if isinstance(info, list) else info
  rows.append(f"| {name} | {wanted or '(dependency of a dependency)'} | {info['license']} |")
(out / "VERSION").write_text(f"@niivue/niivue {version} dist/index.js (npm), vendored as niivue.js\n")
(out / "LICENSE").write_text(f"""BSD 2-Clause License

Copyright (c) {package['author']} (https://github.com/niivue/niivue)
All rights reserved.

Redistribution and use in source and binary forms, with or without
modification, are permitted provided that the following conditions are met:

1. Redistributions of source code must retain the above copyright notice, this
   list of conditions and the following disclaimer.

2. Redistributions in binary form must reproduce the above copyright notice,
   this list of conditions and the following disclaimer in the documentation
   and/or other materials provided with the distribution.

THIS SOFTWARE IS PROVIDED BY THE COPYRIGHT HOLDERS AND CONTRIBUTORS "AS IS"
AND ANY EXPRESS OR IMPLIED WARRANTIES, INCLUDING, BUT NOT LIMITED TO, THE
IMPLIED WARRANTIES OF MERCHANTABILITY AND FITNESS FOR A PARTICULAR PURPOSE ARE
DISCLAIMED. IN NO EVENT SHALL THE COPYRIGHT HOLDER OR CONTRIBUTORS BE LIABLE
FOR ANY DIRECT, INDIRECT, INCIDENTAL, SPECIAL, EXEMPLARY, OR CONSEQUENTIAL
DAMAGES (INCLUDING, BUT NOT LIMITED TO, PROCUREMENT OF SUBSTITUTE GOODS OR
SERVICES; LOSS OF USE, DATA, OR PROFITS; OR BUSINESS INTERRUPTION) HOWEVER
CAUSED AND ON ANY THEORY OF LIABILITY, WHETHER IN CONTRACT, STRICT LIABILITY,
OR TORT (INCLUDING NEGLIGENCE OR OTHERWISE) ARISING IN ANY WAY OUT OF THE USE
OF THIS SOFTWARE, EVEN IF ADVISED OF THE POSSIBILITY OF SUCH DAMAGE.
""")
(out / "THIRD_PARTY.md").write_text(
    f"# Libraries bundled into niivue.js (@niivue/niivue {version})\n\n"
    "From the package's dist/metafile-esm.json; versions as its package.json asks, licences from the npm registry.\n\n"
    "| package | version asked | licence |\n|---|---|---|\n" + "\n".join(rows) + "\n")
print(f"vendored @niivue/niivue {version}: {len(bundled)} bundled libraries")
PY
