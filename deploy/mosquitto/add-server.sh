#!/usr/bin/env bash
# Create broker credentials for the server (username server@edgeloop).
#   add-server.sh [--password-file FILE] [--password-stdin] [--force]
# Prints a generated password once on stdout. See credentials.sh.
exec "$(dirname "${BASH_SOURCE[0]}")/credentials.sh" server "$@"
