#!/bin/sh
# Run once by the postgres image on an empty data folder (mounted into
# /docker-entrypoint-initdb.d/): the two databases of the compose cluster, each owned by its
# own role, both with the password $POSTGRES_PASSWORD.
#   dmsweep  the sweep service's store (DMSWEEP_DATABASE_URL of the api)
#   mlflow   the MLflow server's backend store (--backend-store-uri)
# The password goes in as a psql variable (:'password' quotes it), never pasted into the SQL.
set -eu
psql --no-psqlrc -v ON_ERROR_STOP=1 -v password="$POSTGRES_PASSWORD" \
    --username "${POSTGRES_USER:-postgres}" --dbname "${POSTGRES_DB:-postgres}" <<'SQL'
CREATE ROLE dmsweep LOGIN PASSWORD :'password';
CREATE DATABASE dmsweep OWNER dmsweep;
CREATE ROLE mlflow LOGIN PASSWORD :'password';
CREATE DATABASE mlflow OWNER mlflow;
SQL
