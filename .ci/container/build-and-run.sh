#!/usr/bin/env bash
# Builds the Dockerfile's CPU target and runs the workflow in it, with no Docker engine and no
# container registry: as root, with Debian's debootstrap, podman (import only) and buildah.
#
#   1. base image: a minimal Debian bookworm rootfs from Debian's archive (debootstrap), imported as
#      localhost/debian:bookworm; the rootfs tarball is cached in $OCCFUSION_CONTAINER_CACHE
#      (default /var/cache/occfusion), the image stays in the container storage (vfs driver);
#   2. buildah build --target cpu (CPU_BASE=that image); torch's CPU-only wheel is taken from
#      /opt/wheels when this machine has one there (PyPI only has the CUDA build of torch 2.13.0);
#   3. runs snakemake on tests/configs/tiny.yaml inside the image (buildah run: `podman run` cannot
#      set its rlimits here) with results/ bind-mounted, as the calling user's uid:gid;
#   4. checks the outputs are that user's and that metrics.json and summary.csv equal a run of the
#      same config outside the container (the repository's .venv);
#   5. prints the times; removes its working container and temporary folders whatever happens.
#
# Exits non-zero on any failure. Environment: OCCFUSION_CONTAINER_CACHE, DEBIAN_MIRROR,
# OCCFUSION_RUN_AS (uid:gid; default the sudo caller's, else the current user's),
# OCCFUSION_SKIP_HOST_RUN=1 (skip the comparison run), OCCFUSION_REBUILD_BASE=1 (debootstrap afresh),
# OCCFUSION_KEEP=1 (keep the working folder: logs, both results/).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD

CACHE=${OCCFUSION_CONTAINER_CACHE:-/var/cache/occfusion}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
BASE=localhost/debian:bookworm
IMAGE=localhost/occfusion:cpu
CONFIG=tests/configs/tiny.yaml
METRICS=results/tiny/occgauhuman/metrics.json
RUN_AS=${OCCFUSION_RUN_AS:-${SUDO_UID:-$(id -u)}:${SUDO_GID:-$(id -g)}}
CORES=2
# one storage for buildah and podman (see `podman --storage-driver vfs images`); vfs needs no
# kernel overlay support, at the price of a full copy per layer
STORAGE=(--storage-driver vfs)

say() { printf '== %s\n' "$*"; }
fail() { printf 'build-and-run: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || fail "needs root (debootstrap, buildah with chroot isolation)"

need=()
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v buildah >/dev/null || need+=(buildah)
command -v podman >/dev/null || need+=(podman)
if [ ${#need[@]} -gt 0 ]; then
    say "installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

work=$(mktemp -d /tmp/occfusion-container.XXXXXX)
container=""
t_base=- t_build=- t_run=- t_host=-
cleanup() {
    local rc=$?
    printf 'container: base image %ss, build %ss, run %ss (host run %ss)\n' "$t_base" "$t_build" "$t_run" "$t_host"
    if [ -n "$container" ]; then buildah "${STORAGE[@]}" rm "$container" >/dev/null || true; fi
    # keep the storage small (vfs: a full copy per layer): the base image, the latest image and its
    # cached layers stay; older builds' layers go (one prune frees one level of a chain: repeat)
    for _ in 1 2 3; do [ -n "$(buildah "${STORAGE[@]}" rmi --prune 2>/dev/null)" ] || break; done
    if [ "${OCCFUSION_KEEP:-0}" = 1 ]; then echo "kept $work"; else rm -rf "$work"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

main() {
# ------------------------------------------------------------------------------------ 1. base image
t0=$(date +%s)
tarball=$CACHE/debian-bookworm-minbase.tar
if [ "${OCCFUSION_REBUILD_BASE:-0}" = 1 ]; then
    rm -f "$tarball"
    buildah "${STORAGE[@]}" rmi -f "$BASE" >/dev/null 2>&1 || true
fi
if ! buildah "${STORAGE[@]}" inspect --type image "$BASE" >/dev/null 2>&1; then
    if [ ! -s "$tarball" ]; then
        say "debootstrap bookworm (minbase) from $MIRROR"
        mkdir -p "$CACHE"
        rootfs=$work/rootfs
        nice -n 10 debootstrap --variant=minbase bookworm "$rootfs" "$MIRROR" >"$work/debootstrap.log" 2>&1 \
            || { tail -20 "$work/debootstrap.log" >&2; fail "debootstrap failed"; }
        # the apt sources of Debian's official image: the release, its updates and security fixes
        rm -f "$rootfs/etc/apt/sources.list"
        cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${MIRROR%/debian}/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
        rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/*.log
        tar -C "$rootfs" --numeric-owner -cf "$tarball.part" .
        mv "$tarball.part" "$tarball"
        rm -rf "$rootfs"
    fi
    say "importing $tarball as $BASE"
    podman "${STORAGE[@]}" import "$tarball" "$BASE" >/dev/null 2>&1
fi
t_base=$(( $(date +%s) - t0 ))

# ------------------------------------------------------------------------------------ 2. build
build_args=(--build-arg "CPU_BASE=$BASE")
if compgen -G "/opt/wheels/torch-2.13.0+cpu-*.whl" >/dev/null; then
    build_args+=(--build-arg PIP_FIND_LINKS=/wheels -v /opt/wheels:/wheels:ro)
    torch_from="this machine's CPU-only wheel (/opt/wheels)"
else
    torch_from="PyPI (the CUDA build: no CPU-only torch 2.13.0 there)"
fi
# pip inside the build trusts certifi's CAs only; where this machine's pip is told to trust another
# bundle (a TLS-intercepting proxy), the build gets the same bundle
cert=${PIP_CERT:-$(.venv/bin/pip config list 2>/dev/null | sed -n "s/^global\.cert='\(.*\)'$/\1/p" | tail -1)}
if [ -n "$cert" ] && [ -s "$cert" ]; then
    build_args+=(--build-arg PIP_CERT=/etc/pip-ca.crt -v "$cert:/etc/pip-ca.crt:ro")
fi
say "building $IMAGE (--target cpu; torch from $torch_from)"
t0=$(date +%s)
nice -n 10 buildah "${STORAGE[@]}" build --isolation chroot --layers --target cpu "${build_args[@]}" \
    -t "$IMAGE" -f Dockerfile . >"$work/build.log" 2>&1 \
    || { tail -40 "$work/build.log" >&2; fail "buildah build failed"; }
t_build=$(( $(date +%s) - t0 ))
printf '   (%s steps from the layer cache)\n' "$(grep -c "Using cache" "$work/build.log" || true)"

# ------------------------------------------------------------------------------------ 3. run
mkdir -p "$work/container/results" "$work/host"
chown -R "$RUN_AS" "$work/container"
say "running snakemake on $CONFIG in $IMAGE as $RUN_AS"
container=$(buildah "${STORAGE[@]}" from --quiet "$IMAGE")
t0=$(date +%s)
# in a fresh folder, as the host run below (and the tests): the image's /work/config.yaml would
# otherwise be merged with the tiny config and add its subjects and variants
buildah "${STORAGE[@]}" run --isolation chroot --user "$RUN_AS" \
    -v "$work/container:/tmp/run" "$container" -- \
    snakemake --snakefile /work/Snakefile --directory /tmp/run --configfile "/work/$CONFIG" \
    --cores "$CORES" --resources gpu=1 >"$work/run.log" 2>&1 \
    || { tail -40 "$work/run.log" >&2; fail "the workflow failed in the container"; }
t_run=$(( $(date +%s) - t0 ))

# ------------------------------------------------------------------------------------ 4. checks
out=$work/container/results
[ -s "$out/${METRICS#results/}" ] || fail "no ${METRICS} from the container run"
strangers=$(find "$out" \( ! -uid "${RUN_AS%:*}" -o ! -gid "${RUN_AS#*:}" \) -print | head -5)
[ -z "$strangers" ] || fail "outputs not owned by $RUN_AS: $strangers"
say "outputs owned by $RUN_AS: $(find "$out" | wc -l) files and folders"

if [ "${OCCFUSION_SKIP_HOST_RUN:-0}" != 1 ]; then
    say "the same run outside the container (.venv)"
    t0=$(date +%s)
    .venv/bin/snakemake --configfile "$ROOT/$CONFIG" --directory "$work/host" --cores "$CORES" \
        --resources gpu=1 >"$work/host.log" 2>&1 || { tail -40 "$work/host.log" >&2; fail "the host run failed"; }
    t_host=$(( $(date +%s) - t0 ))
    .venv/bin/python .ci/container/compare_results.py "$work/host/results" "$out" \
        || fail "the container's results differ from the host's"
    say "results equal the host run's"
fi

say "image $IMAGE: $(podman "${STORAGE[@]}" image inspect --format '{{.Size}}' "$IMAGE" | numfmt --to=iec)"
}

# a function is read whole before it runs: editing this file during a run cannot derail the run
main "$@"
