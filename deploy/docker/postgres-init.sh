#!/bin/sh
# Run once by the postgres image on an empty data folder (mounted into
# /docker-entrypoint-initdb.d/): the two databases of the compose cluster, each owned by its
# own role with its own password, read from the secret files the variables name:
#   dmsweep  the sweep service's store (the api)       DMSWEEP_DB_PASSWORD_FILE
#   mlflow   the MLflow server's backend store         MLFLOW_DB_PASSWORD_FILE
#   optuna   the Optuna studies of tuning sweeps       OPTUNA_DB_PASSWORD_FILE
# psql reads each file itself (a backquoted `cat` of its \set), so a password is neither in a
# process's arguments nor in the SQL text; :'name' quotes it as an SQL literal.
set -eu
for file in "${DMSWEEP_DB_PASSWORD_FILE:?}" "${MLFLOW_DB_PASSWORD_FILE:?}" "${OPTUNA_DB_PASSWORD_FILE:?}"; do
    if [ ! -s "$file" ]; then
        echo "postgres-init: $file is missing or empty (deploy/docker/make-secrets.sh)" >&2
        exit 1
    fi
done
psql --no-psqlrc -v ON_ERROR_STOP=1 \
    --username "${POSTGRES_USER:-postgres}" --dbname "${POSTGRES_DB:-postgres}" <<'SQL'
\set dmsweep_password `cat "$DMSWEEP_DB_PASSWORD_FILE"`
\set mlflow_password `cat "$MLFLOW_DB_PASSWORD_FILE"`
\set optuna_password `cat "$OPTUNA_DB_PASSWORD_FILE"`
CREATE ROLE dmsweep LOGIN PASSWORD :'dmsweep_password';
CREATE DATABASE dmsweep OWNER dmsweep;
CREATE ROLE mlflow LOGIN PASSWORD :'mlflow_password';
CREATE DATABASE mlflow OWNER mlflow;
CREATE ROLE optuna LOGIN PASSWORD :'optuna_password';
CREATE DATABASE optuna OWNER optuna;
SQL
