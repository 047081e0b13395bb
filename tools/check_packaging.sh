#!/usr/bin/env bash
# Packaging check: `python -m build` makes an sdist (with the C sources) and a wheel; the
# wheel, and the sdist built from scratch, each install into a fresh venv and pass a
# smoke test (import, version, an echo round trip on uringloop, `python -m uringloop info`;
# the wheel also runs the README's echo demo).
# Usage: tools/check_packaging.sh [PYTHON]   (default: python3)
set -euo pipefail
cd "$(dirname "$0")/.."
py=${1:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$py" -m venv "$work/buildenv"
"$work/buildenv/bin/pip" install -q build
"$work/buildenv/bin/python" -m build --outdir "$work/dist" . >"$work/build.log" 2>&1 || {
  tail -30 "$work/build.log"; exit 1; }

sdist=$(ls "$work"/dist/*.tar.gz)
wheel=$(ls "$work"/dist/*.whl)
echo "built: $(basename "$sdist") $(basename "$wheel")"

# The sdist must carry what a source build needs (listings go to files: `grep -q` in a
# pipe would end the pipe early, which pipefail reports as a failure).
tar -tzf "$sdist" >"$work/sdist.txt"
unzip -l "$wheel" >"$work/wheel.txt"
for f in uringloop/_uring.c uringloop/_uring.h uringloop/_build.py setup.py pyproject.toml \
         uringloop/py.typed LICENSE README.md; do
  if ! grep -q "^[^/]*/$f\$" "$work/sdist.txt"; then
    echo "sdist lacks $f" >&2
    exit 1
  fi
done
# The wheel carries the compiled core and the type marker.
grep -q "uringloop/_uring.*\.so" "$work/wheel.txt" || { echo "wheel lacks the C core" >&2; exit 1; }
grep -q "uringloop/py.typed" "$work/wheel.txt" || { echo "wheel lacks py.typed" >&2; exit 1; }
# The core is built for the stable ABI, and the wheel's tag says so (cp311-abi3).
case "$(basename "$wheel")" in
  *-cp311-abi3-*) ;;
  *) echo "wheel is not tagged cp311-abi3: $(basename "$wheel")" >&2; exit 1 ;;
esac

smoke='
import asyncio, uringloop, sys
assert uringloop.__version__, "no version"

async def main():
    async def handle(r, w):
        w.write(await r.readexactly(5)); await w.drain(); w.close()
    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(b"hello"); got = await r.readexactly(5); w.close(); srv.close()
    assert isinstance(asyncio.get_running_loop(), uringloop.Loop)
    return got

assert uringloop.run(main()) == b"hello"
print("smoke ok:", uringloop.__version__, uringloop.__file__)
'

for kind in wheel sdist; do
  "$py" -m venv "$work/$kind-env"
  "$work/$kind-env/bin/pip" install -q --upgrade pip >/dev/null
  if [ "$kind" = wheel ]; then art=$wheel; else art=$sdist; fi
  "$work/$kind-env/bin/pip" install -q "$art"
  (cd "$work" && "$work/$kind-env/bin/python" -c "$smoke")
  (cd "$work" && "$work/$kind-env/bin/python" -m uringloop info >/dev/null)
  if [ "$kind" = wheel ]; then
    # the README's demo, against the installed package (examples/ is not in the wheel)
    "$work/$kind-env/bin/python" examples/echo_demo.py -d 0.5 | tee "$work/demo.txt"
    grep -q "every echo verified" "$work/demo.txt" || { echo "demo failed" >&2; exit 1; }
  fi
  echo "$kind: installed and smoke-tested"
done
echo "packaging check passed"
