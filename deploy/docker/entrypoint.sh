#!/bin/sh
# The one entrypoint of the EPM image: run any EPM process by name.
#
#   entrypoint.sh gateway | request-svc | approval-svc | audit-svc | notify-svc
#       -> exec epm serve NAME   (epm refuses a name it does not know, listing the real ones)
#   entrypoint.sh streams-apply [--json]
#       -> exec epm streams apply   (the Kubernetes Job; idempotent)
#   entrypoint.sh epm ARGS...
#       -> exec epm ARGS...   (any other CLI command, e.g. for an operator's one-off pod)
#
# The list of service names lives in epm_cli.services.SERVICES only; this script
# does not repeat it. Every branch ends in exec so the process gets SIGTERM
# directly from Kubernetes and shuts down cleanly.
set -eu

usage() {
    cat <<'USAGE'
usage: entrypoint.sh NAME [ARGS...]

  NAME            an EPM process, run as `epm serve NAME`
                  (`entrypoint.sh epm serve --help` lists them)
  streams-apply   runs `epm streams apply` (create/update the JetStream streams)
  epm ARGS...     runs any other `epm` command

Settings come from EPM_* environment variables (deploy/README.md).
USAGE
}

if [ "$#" -eq 0 ]; then
    echo "entrypoint.sh: no process name given" >&2
    usage >&2
    exit 64
fi

name=$1
shift
case "$name" in
    -h | --help | help)
        usage
        exit 0
        ;;
    streams-apply)
        exec epm streams apply "$@"
        ;;
    epm)
        exec epm "$@"
        ;;
    -* | "")
        echo "entrypoint.sh: '$name' is not a process name" >&2
        usage >&2
        exit 64
        ;;
    *)
        if [ "$#" -gt 0 ]; then
            echo "entrypoint.sh: '$name' takes no arguments (got: $*); configure it with EPM_* variables" >&2
            exit 64
        fi
        exec epm serve "$name"
        ;;
esac
