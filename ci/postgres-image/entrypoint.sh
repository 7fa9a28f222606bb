#!/bin/bash
# lily-e2e's PostgreSQL image entrypoint: starts like the official `postgres` image.
#
# - Environment: POSTGRES_USER (default postgres), POSTGRES_PASSWORD, POSTGRES_DB (default
#   $POSTGRES_USER), POSTGRES_HOST_AUTH_METHOD (default scram-sha-256), POSTGRES_INITDB_ARGS,
#   PGDATA (default /var/lib/postgresql/data).
# - First start: initdb as `postgres`, TLS on with a self-signed certificate made here, a
#   temporary server on the Unix socket only (its log on stdout, as the official image's),
#   POSTGRES_DB created, /docker-entrypoint-initdb.d/* run (*.sh executed or sourced, *.sql
#   and *.sql.gz fed to psql), the temporary server stopped.
# - Then `exec postgres "$@"` (its log on stderr); `-c name=value` arguments pass through.
#
# So "database system is ready to accept connections" appears on stdout, then on stderr,
# which is what testcontainers' Postgres module waits for.
set -Eeo pipefail

if [ "${1:0:1}" = '-' ]; then
	set -- postgres "$@"
fi

export PGDATA="${PGDATA:-/var/lib/postgresql/data}"
export POSTGRES_USER="${POSTGRES_USER:-postgres}"
export POSTGRES_DB="${POSTGRES_DB:-$POSTGRES_USER}"

if [ "$1" != 'postgres' ]; then
	exec "$@"
fi

if [ "$(id -u)" = '0' ]; then
	mkdir -p "$PGDATA" /var/run/postgresql
	chmod 0700 "$PGDATA"
	chmod 2777 /var/run/postgresql
	chown -R postgres:postgres "$PGDATA" /var/run/postgresql
	exec setpriv --reuid=postgres --regid=postgres --init-groups "$BASH_SOURCE" "$@"
fi

if [ ! -s "$PGDATA/PG_VERSION" ]; then
	if [ -z "$POSTGRES_PASSWORD" ] && [ "$POSTGRES_HOST_AUTH_METHOD" != 'trust' ]; then
		echo >&2 'error: POSTGRES_PASSWORD is empty; set it, or POSTGRES_HOST_AUTH_METHOD=trust'
		exit 1
	fi
	pwfile=
	if [ -n "$POSTGRES_PASSWORD" ]; then
		pwfile="$(mktemp)"
		printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
	fi
	# shellcheck disable=SC2086 # POSTGRES_INITDB_ARGS is a list of words, as upstream's
	initdb --username="$POSTGRES_USER" ${pwfile:+--pwfile="$pwfile"} $POSTGRES_INITDB_ARGS >/dev/null
	[ -z "$pwfile" ] || rm -f "$pwfile"

	# TLS with a certificate of this container's own.
	openssl req -new -x509 -days 3650 -nodes -subj '/CN=localhost' \
		-keyout "$PGDATA/server.key" -out "$PGDATA/server.crt" >/dev/null 2>&1
	chmod 0600 "$PGDATA/server.key"
	method="${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}"
	{
		echo "listen_addresses = '*'"
		echo "ssl = on"
		echo "ssl_cert_file = 'server.crt'"
		echo "ssl_key_file = 'server.key'"
	} >> "$PGDATA/postgresql.conf"
	echo "host all all all $method" >> "$PGDATA/pg_hba.conf"

	pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -p 5432 $(printf '%q ' "${@:2}")" -w start

	export PGPASSWORD="$POSTGRES_PASSWORD"
	psql=(psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname postgres)
	if [ "$POSTGRES_DB" != 'postgres' ]; then
		"${psql[@]}" --set db="$POSTGRES_DB" <<-'SQL'
			SELECT 'CREATE DATABASE ' || quote_ident(:'db') WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db')\gexec
		SQL
	fi
	psql+=(--dbname "$POSTGRES_DB")
	for f in /docker-entrypoint-initdb.d/*; do
		[ -e "$f" ] || continue
		case "$f" in
			*.sh)
				if [ -x "$f" ]; then
					echo "$0: running $f"
					"$f"
				else
					echo "$0: sourcing $f"
					# shellcheck disable=SC1090
					. "$f"
				fi
				;;
			*.sql) echo "$0: running $f"; "${psql[@]}" -f "$f" ;;
			*.sql.gz) echo "$0: running $f"; gunzip -c "$f" | "${psql[@]}" ;;
			*) echo "$0: ignoring $f" ;;
		esac
	done
	unset PGPASSWORD

	pg_ctl -D "$PGDATA" -m fast -w stop
	echo
	echo 'PostgreSQL init process complete; ready for start up.'
	echo
fi

exec "$@"
