#!/usr/bin/env bash
# Create broker credentials for one agent; its username is the agent id.
#   add-agent.sh [--password-file FILE] [--password-stdin] [--force] AGENT_ID
# Prints a generated password once on stdout. See credentials.sh.
exec "$(dirname "${BASH_SOURCE[0]}")/credentials.sh" agent "$@"
