# Shared by the scripts that install system packages (scripts/setup.sh, scripts/slurm/start-local.sh): every
# installation of rmdistill's runs under one lock, so two of them started at once (two tests, or a test and setup)
# wait for each other instead of failing on dpkg's lock; apt-get itself also waits for dpkg's lock (held by anything
# else on the machine) for up to 10 minutes. Source it; it defines functions only.

# Where the locks live: /run/lock (or /var/lock) when writable, else the temporary directory.
lock_dir() {
    local d
    for d in /run/lock /var/lock "${TMPDIR:-/tmp}"; do
        if [[ -d $d && -w $d ]]; then
            echo "$d"
            return
        fi
    done
    echo /tmp
}

# Whether the Slurm daemons, clients and munge are all on PATH (with /usr/sbin).
slurm_installed() {
    local b
    for b in munged slurmctld slurmd sbatch squeue sinfo scancel; do
        PATH=$PATH:/usr/sbin:/sbin command -v "$b" >/dev/null 2>&1 || return 1
    done
}

# apt_install PACKAGE...: installs the Debian packages that are missing, as root, under the shared lock; checks
# again once it holds the lock, so the second of two callers finds them installed and returns at once.
apt_install() {
    local missing=() p
    (
        flock 9
        for p in "$@"; do
            dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
        done
        if (( ${#missing[@]} == 0 )); then
            exit 0
        fi
        echo "installing ${missing[*]} with apt-get (as root; once)" >&2
        export DEBIAN_FRONTEND=noninteractive
        local wait=(-o DPkg::Lock::Timeout=600)
        # (Services a package starts must not inherit the lock: fd 9 is closed for apt-get.)
        apt-get "${wait[@]}" update -qq >&2 9>&-
        apt-get "${wait[@]}" install -y -qq --no-install-recommends "${missing[@]}" >&2 9>&-
    ) 9>"$(lock_dir)/rmdistill-install.lock"
}
