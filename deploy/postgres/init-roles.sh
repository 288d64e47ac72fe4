#!/bin/sh
# One login role per service, each allowed to create (and so to own) its own schema and
# nothing else: the auth role cannot read the payments tables. Run by the postgres image
# on the first start of an empty data directory (/docker-entrypoint-initdb.d); safe to
# run again. Passwords come from KEELSON_DB_PASSWORD_<SERVICE>.
set -eu

for service in gateway auth logs notifications payments; do
    variable="KEELSON_DB_PASSWORD_$(printf '%s' "$service" | tr '[:lower:]' '[:upper:]')"
    password="$(printenv "$variable" || printf 'keelson-%s' "$service")"
    psql -v ON_ERROR_STOP=1 -q \
        --username "${POSTGRES_USER:-postgres}" --dbname "${POSTGRES_DB:-keelson}" \
        -v role="keelson_${service}" -v password="$password" <<'SQL'
SELECT format('CREATE ROLE %I LOGIN PASSWORD %L', :'role', :'password')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'role') \gexec
SELECT format('ALTER ROLE %I LOGIN PASSWORD %L', :'role', :'password') \gexec
SELECT format('GRANT CONNECT, CREATE ON DATABASE %I TO %I', current_database(), :'role') \gexec
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
SQL
done
