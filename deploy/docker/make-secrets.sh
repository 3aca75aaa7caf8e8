#!/bin/sh
# Writes the secret files docker-compose.yml mounts (its `secrets:`), each a new random string,
# into deploy/docker/secrets/ (or the folder given); a file already there is kept, so running it
# again changes nothing. From the repository root:
#
#   deploy/docker/make-secrets.sh
#
#   postgres_password.txt    PostgreSQL's superuser (POSTGRES_PASSWORD_FILE of the postgres image)
#   dmsweep_db_password.txt  the role dmsweep, owner of the api's store
#   mlflow_db_password.txt   the role mlflow, owner of the MLflow server's store
#   optuna_db_password.txt   the role optuna, owner of the Optuna studies of tuning sweeps
#   optuna_storage.txt       their URL with that password (DMSWEEP_OPTUNA_STORAGE_FILE of the
#                            Ray head, where the sweep drivers run)
#   api_token.txt            the sweep service's bearer token (the api's DMSWEEP_API_TOKEN_FILE;
#                            clients send it: export DMSWEEP_API_TOKEN_FILE=<this file>)
#   ray_token.txt            Ray's token (RAY_AUTH_TOKEN_PATH) on every Ray node and the api
#
# Hex, 64 characters: the passwords go into database URLs unescaped, and the api wants a token
# of 32 characters or more. The folder is the owner's only (0700); the files are 0644, because
# compose mounts a secret file with its mode on the host and the containers read it as their own
# users (postgres; dmsweep, uid 10001). The database passwords are set when PostgreSQL first
# initialises its volume: a new one later needs `ALTER ROLE` as well.
set -eu
dir="${1:-$(dirname "$0")/secrets}"
umask 022
mkdir -p "$dir"
chmod 700 "$dir"
for name in postgres_password dmsweep_db_password mlflow_db_password optuna_db_password api_token ray_token; do
    file="$dir/$name.txt"
    if [ -s "$file" ]; then
        echo "kept    $file"
        continue
    fi
    value="$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')"
    printf '%s\n' "$value" > "$file"
    echo "created $file"
done
url="$dir/optuna_storage.txt"
if [ -s "$url" ]; then
    echo "kept    $url"
else
    printf 'postgresql+psycopg://optuna:%s@postgres:5432/optuna\n' "$(cat "$dir/optuna_db_password.txt")" > "$url"
    echo "created $url"
fi
