#!/usr/bin/env bash
# Checks the README's test command on a machine where nothing was installed by hand: a fresh Debian bookworm built
# with debootstrap, holding only what a fresh machine has (a C toolchain, Python 3 with venv, git, CA certificates;
# no Slurm, no munge, no virtualenv, no build), with the host's Rust toolchain bind-mounted (/root/.cargo,
# /root/.rustup) and the shared data beside the clone as ../shared. Run it as root on a Debian or Ubuntu host that
# can reach deb.debian.org, PyPI and crates.io.
#
#   scripts/ci/fresh-machine-check.sh [--slurm-only] [--keep] [ROOTFS]
#
# Default (full): a clean clone of this repository's HEAD is put at /root/rmdistill in the chroot and
#   `CI=1 ./scripts/test.sh` runs there (CI=1 makes the real-Slurm tests fail instead of skipping). That is the
#   README's test command from scratch: the venv and PyTorch download (several GB), the Debian packages, a cold
#   build (15-25 minutes on 2 cores), then the whole suite.
# --slurm-only: the race this check exists for, quickly. The repository is bind-mounted at its own path (so the
#   test binaries already built in its target/ run as they are) and tests/export_slurm.rs's two real-Slurm tests run
#   at once on a chroot without Slurm: both start scripts/slurm/start-local.sh, which must install slurm-wlm once
#   (under the install lock) and start two clusters side by side. Build the tests first
#   (`cargo test --test export_slurm --no-run`).
# --keep: leave ROOTFS in place (it is reused by the next run: debootstrap is skipped when ROOTFS/etc/debian_version
#   exists, but nothing else is reinstalled by hand — what the check installed stays).
# ROOTFS defaults to /var/tmp/rmdistill-fresh-root. Mounts are undone on exit.
set -euo pipefail

here=$(cd "$(dirname "$0")/../.." && pwd)
mode=full
keep=0
root=/var/tmp/rmdistill-fresh-root
for a in "$@"; do
    case "$a" in
        --slurm-only) mode=slurm ;;
        --keep) keep=1 ;;
        -*) echo "usage: $0 [--slurm-only] [--keep] [ROOTFS]" >&2; exit 2 ;;
        *) root=$a ;;
    esac
done
if [[ $(id -u) != 0 ]]; then
    echo "fresh-machine-check: run as root (debootstrap, chroot and mounts need it)" >&2
    exit 2
fi
command -v debootstrap >/dev/null || { apt-get update -qq && apt-get install -y -qq debootstrap; }

log() { echo "== $(date -u +%H:%M:%S) $*" >&2; }

# A check cut off before its cleanup (a session that ended mid-run) leaves its mounts, and its root is no longer a
# fresh machine: undo the mounts (lazily, innermost first) and start from a new root, rather than fail on a stale one.
if grep -q " $root/" /proc/mounts; then
    log "an earlier check left mounts under $root: unmounting them and starting from a new root"
    grep " $root/" /proc/mounts | awk '{print $2}' | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
    if grep -q " $root/" /proc/mounts; then
        echo "fresh-machine-check: cannot unmount what an earlier check left under $root; see /proc/mounts" >&2
        exit 2
    fi
    rm -rf --one-file-system "$root"
fi
if [[ ! -f $root/etc/debian_version ]]; then
    log "debootstrap bookworm into $root"
    mkdir -p "$root"
    debootstrap --variant=minbase \
        --include=build-essential,python3,python3-venv,git,ca-certificates,hostname,procps,curl \
        bookworm "$root" http://deb.debian.org/debian >"$root.debootstrap.log" 2>&1 \
        || { tail -n 30 "$root.debootstrap.log" >&2; exit 1; }
fi
cp /etc/resolv.conf "$root/etc/resolv.conf"
# The machine's own certificate trust (machines of this kind reach the registries through a proxy with its own CA):
# the host's CA files and pip's certificate setting, and below the certificate variables of its environment. These
# belong to the machine, not to the project, so a fresh machine of this kind has them too.
if [[ -d /usr/local/share/ca-certificates ]]; then
    mkdir -p "$root/usr/local/share/ca-certificates"
    cp -a /usr/local/share/ca-certificates/. "$root/usr/local/share/ca-certificates/"
fi
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
if [[ -f /etc/pip.conf ]]; then cp /etc/pip.conf "$root/etc/pip.conf"; fi
cert_env=()
for v in SSL_CERT_FILE SSL_CERT_DIR PIP_CERT REQUESTS_CA_BUNDLE CURL_CA_BUNDLE GIT_SSL_CAINFO; do
    if [[ -n ${!v:-} ]]; then cert_env+=("$v=${!v}"); fi
done
echo "deb http://deb.debian.org/debian bookworm main" >"$root/etc/apt/sources.list"

mounted=()
bind() { # bind SRC DEST-inside-root
    mkdir -p "$root$2"
    mount --bind "$1" "$root$2"
    mounted+=("$root$2")
}
rbind() { # rbind DIR: the host's DIR with every mount below it (/sys/fs/cgroup, which slurmd needs; /dev/pts)
    mkdir -p "$root$1"
    mount --rbind "$1" "$root$1"
    mount --make-rslave "$root$1"
    mounted+=("$root$1")
}
cleanup() {
    local i
    for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do umount -R -l "${mounted[i]}" 2>/dev/null || true; done
    # Bind mounts of the host's own file system (the toolchain, the repository) must be gone before anything under
    # ROOTFS is deleted: rm's --one-file-system cannot tell them apart.
    if grep -q " $root/" /proc/mounts; then
        echo "fresh-machine-check: $root still has mounts; left in place" >&2
    elif (( ! keep )); then
        rm -rf --one-file-system "$root"
    fi
}
trap cleanup EXIT
mkdir -p "$root/proc" "$root/sys" "$root/dev"
mount -t proc proc "$root/proc"; mounted+=("$root/proc")
rbind /sys
rbind /dev
bind /root/.cargo /root/.cargo
bind /root/.rustup /root/.rustup

in_root() { chroot "$root" /usr/bin/env -i HOME=/root PATH=/root/.cargo/bin:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin \
    TERM=dumb LANG=C.UTF-8 "${cert_env[@]}" "$@"; }

log "the chroot has no Slurm: $(in_root bash -c 'command -v sbatch slurmd munged || echo none')"

if [[ $mode == slurm ]]; then
    # The top directory holding the repository (its target/, and libtorch where the test binaries' rpath points
    # through the .deps/torch link, which may lead to a sibling checkout), at the same paths.
    top=/$(cut -d/ -f2 <<<"$here")
    bind "$top" "$top"
    torch=$(readlink -f "$here/.deps/torch" || true)
    if [[ -n $torch && $torch != "$top"/* ]]; then bind "$torch" "$torch"; fi
    bin=$(ls -t "$here"/target/debug/deps/export_slurm-* 2>/dev/null | grep -v '\.d$' | head -n 1)
    [[ -x $bin ]] || { echo "build the tests first: cargo test --test export_slurm --no-run" >&2; exit 2; }
    log "running both real-Slurm tests at once in the chroot ($bin)"
    in_root bash -c "cd '$here' && CI=1 '$bin' real_slurm --test-threads=2 --nocapture" 2>&1 | tee "$root.slurm.log"
    rc=${PIPESTATUS[0]}
    log "slurm-wlm in the chroot now: $(in_root dpkg-query -W -f='${Version}' slurm-wlm 2>/dev/null || echo missing)"
    exit "$rc"
fi

log "a clean clone of HEAD at /root/rmdistill, shared data at /root/shared"
rm -rf "$root/root/rmdistill"
git clone -q --no-local "$here" "$root/root/rmdistill"
git -C "$root/root/rmdistill" checkout -q "$(git -C "$here" rev-parse HEAD)"
shared=$(cd "$here/../shared" 2>/dev/null && pwd || true)
if [[ -n $shared ]]; then bind "$shared" /root/shared; fi
log "CI=1 ./scripts/test.sh in the chroot"
in_root bash -c 'cd /root/rmdistill && CI=1 ./scripts/test.sh' 2>&1 | tee "$root.test.log"
rc=${PIPESTATUS[0]}
log "exit $rc (log: $root.test.log)"
exit "$rc"
