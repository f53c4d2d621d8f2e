#!/usr/bin/env bash
# Create (or, with --force, reset) broker credentials for an edgeloop agent or
# for the server, in a mosquitto password file.
#
#   credentials.sh agent [options] AGENT_ID
#   credentials.sh server [options]
#
# Options:
#   --password-file FILE  default: deploy/docker/secrets/mosquitto/passwd
#                         (or $EDGELOOP_BROKER_PASSWD_FILE)
#   --password-stdin      read the password from the first line of stdin
#                         instead of generating one
#   --force               replace the password of an existing user
#
# A generated password is printed once, alone on stdout; everything else goes
# to stderr, so `PW=$(add-agent.sh cam-7)` captures just the password. The
# password never appears on a command line (mosquitto_passwd reads it from a
# pipe), so it cannot leak through `ps`.
#
# The agent id rule is protocol/topics.py ID_RE; tests/test_deploy_mosquitto.py
# checks that this script accepts exactly the ids that rule accepts.
set -euo pipefail
# Character ranges below must mean ASCII, whatever the caller's locale.
export LC_ALL=C

SERVER_USER="server@edgeloop"
ID_RE='^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$'
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

usage() {
    sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

die() {
    echo "error: $*" >&2
    exit 1
}

find_mosquitto_passwd() {
    local candidate
    for candidate in "$(command -v mosquitto_passwd 2>/dev/null || true)" /usr/bin/mosquitto_passwd /usr/local/bin/mosquitto_passwd; do
        if [[ -n "$candidate" && -x "$candidate" ]]; then
            echo "$candidate"
            return 0
        fi
    done
    die "mosquitto_passwd not found: install the 'mosquitto' package, or run this inside the broker container (docker compose exec mosquitto ...)"
}

generate_password() {
    # 32 random bytes (256 bits) as ~40 characters of [A-Za-z0-9].
    head -c 32 /dev/urandom | base64 | tr -d '\n=+/'
}

user_exists() {
    awk -F: -v u="$1" '$1 == u { found = 1 } END { exit !found }' "$2"
}

main() {
    [[ $# -ge 1 ]] || usage
    local role="$1"
    shift
    local password_file="${EDGELOOP_BROKER_PASSWD_FILE:-$here/../docker/secrets/mosquitto/passwd}"
    local from_stdin=0 force=0 user=""
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --password-file) [[ $# -ge 2 ]] || usage; password_file="$2"; shift 2 ;;
            --password-stdin) from_stdin=1; shift ;;
            --force) force=1; shift ;;
            -h|--help) usage ;;
            -*) die "unknown option $1" ;;
            *) [[ -z "$user" ]] || die "one user at a time (got '$user' and '$1')"; user="$1"; shift ;;
        esac
    done

    case "$role" in
        agent)
            [[ -n "$user" ]] || die "give the agent id"
            [[ "$user" =~ $ID_RE ]] || die "agent id '$user' must match $ID_RE (letters, digits, . _ -; at most 64; no / + #)"
            ;;
        server)
            [[ -z "$user" || "$user" == "$SERVER_USER" ]] || die "the server user is always $SERVER_USER (the acl file names it)"
            user="$SERVER_USER"
            ;;
        *) die "role must be 'agent' or 'server', not '$role'" ;;
    esac

    password_file="$(realpath -m -- "$password_file")"
    local tool
    tool="$(find_mosquitto_passwd)"

    local password generated=0
    if [[ $from_stdin -eq 1 ]]; then
        IFS= read -r password || true
        [[ ${#password} -ge 12 ]] || die "the password from stdin must be at least 12 characters"
    else
        password="$(generate_password)"
        generated=1
    fi

    mkdir -p "$(dirname "$password_file")"
    if [[ ! -e "$password_file" ]]; then
        (umask 077 && : > "$password_file")
    fi
    if user_exists "$user" "$password_file" && [[ $force -ne 1 ]]; then
        die "'$user' already has credentials in $password_file (add --force to reset its password)"
    fi

    # mosquitto_passwd prompts twice; answering through a pipe keeps the
    # password off the command line.
    printf '%s\n%s\n' "$password" "$password" | "$tool" "$password_file" "$user" >/dev/null 2>&1 \
        || die "mosquitto_passwd failed to write $password_file"
    chmod go-rwx "$password_file" 2>/dev/null || true

    echo "added $role '$user' to $password_file" >&2
    echo "reload the broker to apply it: docker compose kill -s HUP mosquitto (or kill -HUP <mosquitto pid>)" >&2
    if [[ $generated -eq 1 ]]; then
        echo "its password follows, shown this once: put it in the $role's environment file" >&2
        printf '%s\n' "$password"
    fi
}

main "$@"
