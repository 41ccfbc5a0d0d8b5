#!/usr/bin/env bash
# Writes the secrets dropshipd.service loads into /etc/dropshipd/credentials.
#
# Usage (as root, after installing /etc/dropshipd/config.toml):
#   install-credentials.sh              one plaintext file per secret, root-only
#   install-credentials.sh --encrypt    one systemd-creds encrypted NAME.cred per
#                                       secret, plus the unit drop-in that loads them
#
# The secrets needed are the "cred:NAME" references in the config. For each one
# that does not exist yet, it asks for the value (read without echo; stdin may
# also be a pipe, one line per secret in the order asked). For tokens, the PII
# key and the webhook secret an empty answer generates a random value; values
# that come from Razorpay's or Shiprocket's dashboards must be pasted.
# Existing secrets are never overwritten: delete a file to replace it.
#
# Overrides (for staging or tests):
#   DROPSHIPD_CONFIG           default /etc/dropshipd/config.toml
#   DROPSHIPD_CREDENTIALS_DIR  default /etc/dropshipd/credentials
#   DROPSHIPD_DROPIN_DIR       default /etc/systemd/system/dropshipd.service.d
set -euo pipefail

config=${DROPSHIPD_CONFIG:-/etc/dropshipd/config.toml}
dir=${DROPSHIPD_CREDENTIALS_DIR:-/etc/dropshipd/credentials}
dropin_dir=${DROPSHIPD_DROPIN_DIR:-/etc/systemd/system/dropshipd.service.d}
encrypt=no

die() {
    echo "install-credentials: $*" >&2
    exit 1
}

case ${1:-} in
"") ;;
--encrypt) encrypt=yes ;;
-h | --help)
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"
    exit 0
    ;;
*) die "unknown argument: $1 (try --help)" ;;
esac

[[ $EUID -eq 0 ]] || die "run as root: the credentials directory belongs to root"
[[ -r $config ]] || die "cannot read $config; install the config first"
if [[ $encrypt == yes ]]; then
    command -v systemd-creds >/dev/null || die "--encrypt needs systemd-creds (systemd 250 or newer)"
fi

# Every secret file this script creates is readable by root only.
umask 077

# The credential names the config refers to, comments left out.
mapfile -t names < <(sed 's/#.*//' "$config" | grep -o '"cred:[^"]*"' |
    sed 's/^"cred://; s/"$//' | sort -u)
[[ ${#names[@]} -gt 0 ]] || die "$config refers to no cred:NAME secrets"

# 32 random bytes as 64 hex digits.
random_hex() {
    if command -v openssl >/dev/null; then
        openssl rand -hex 32
    elif command -v xxd >/dev/null; then
        head -c 32 /dev/urandom | xxd -p -c 64
    else
        head -c 32 /dev/urandom | od -An -v -tx1 | tr -d ' \n'
        echo
    fi
}

# How each secret is obtained: "generate" (an empty answer makes one) or "paste".
kind_of() {
    case $1 in
    storage_pii_key | *_token | razorpay_webhook_secret) echo generate ;;
    *) echo paste ;;
    esac
}

# What to tell the operator about a secret.
hint_of() {
    case $1 in
    storage_pii_key) echo "encrypts customer data at rest; paste the old key when restoring a database" ;;
    admin_viewer_token) echo "bearer token for read-only admin API calls" ;;
    admin_operator_token) echo "bearer token for admin API actions; must differ from the viewer token" ;;
    api_storefront_token) echo "bearer token the storefront sends to /api/orders" ;;
    shiprocket_tracking_token) echo "the x-api-key set for the tracking webhook in Shiprocket" ;;
    razorpay_webhook_secret) echo "the secret of this webhook in Razorpay's Dashboard" ;;
    razorpay_previous_webhook_secret) echo "the webhook secret being rotated out" ;;
    razorpay_key_id) echo "Razorpay API key id (rzp_live_...)" ;;
    razorpay_key_secret) echo "Razorpay API key secret" ;;
    shiprocket_password_*) echo "password of Shiprocket API user for account '${1#shiprocket_password_}'" ;;
    *) echo "see config.toml" ;;
    esac
}

target_of() {
    if [[ $encrypt == yes ]]; then echo "$dir/$1.cred"; else echo "$dir/$1"; fi
}

# Writes $2 as secret $1, refusing to replace an existing file.
store() {
    local name=$1 value=$2 target
    target=$(target_of "$name")
    if [[ $encrypt == yes ]]; then
        # The plaintext only travels through a pipe. --name binds the ciphertext to
        # the credential ID, so it cannot be loaded under another name.
        [[ ! -e $target ]] || die "$target appeared meanwhile; not overwriting"
        printf '%s' "$value" | systemd-creds encrypt --name="$name" - "$target"
    else
        # noclobber: the redirection fails if the file exists.
        (set -o noclobber && printf '%s' "$value" >"$target")
    fi
    chmod 0600 "$target"
}

install -d -m 0700 -o root -g root "$dir"
chown root:root "$dir"
chmod 0700 "$dir"

created=() kept=() missing=() generated=()
for name in "${names[@]}"; do
    target=$(target_of "$name")
    if [[ -e $target ]]; then
        kept+=("$name")
        continue
    fi
    kind=$(kind_of "$name")
    if [[ $kind == generate ]]; then
        prompt="$name ($(hint_of "$name")) [Enter to generate]: "
    else
        prompt="$name ($(hint_of "$name")): "
    fi
    value=
    if [[ -t 0 ]]; then
        IFS= read -r -s -p "$prompt" value || true
        echo
    else
        echo "$prompt(from stdin)"
        IFS= read -r value || true
    fi
    value=${value%$'\r'}
    if [[ -z $value ]]; then
        if [[ $kind == generate ]]; then
            value=$(random_hex)
            generated+=("$name")
        else
            missing+=("$name")
            continue
        fi
    fi
    if [[ $name == storage_pii_key && ! $value =~ ^[0-9a-fA-F]{64}$ ]]; then
        die "storage_pii_key must be 64 hex digits (32 bytes)"
    fi
    store "$name" "$value"
    created+=("$name")
done
value=

if [[ $encrypt == yes ]]; then
    # The unit's LoadCredential= lines read plaintext files; this drop-in
    # replaces them with their encrypted counterparts.
    dropin=$dropin_dir/credentials-encrypted.conf
    if [[ -e $dropin ]]; then
        echo "kept $dropin; check that it loads every name below"
    else
        install -d -m 0755 "$dropin_dir"
        {
            echo "# Written by install-credentials.sh --encrypt."
            echo "[Service]"
            echo "# An empty assignment drops the plaintext credentials of the main unit."
            echo "LoadCredential="
            for name in "${names[@]}"; do
                echo "LoadCredentialEncrypted=$name:$dir/$name.cred"
            done
        } | (umask 022 && cat >"$dropin")
        echo "wrote $dropin; run: systemctl daemon-reload"
    fi
fi

list() { if [[ $# -gt 0 ]]; then printf ' %s' "$@"; else printf ' (none)'; fi; }
echo "credentials in $dir:"
echo "  created:$(list "${created[@]}")"
echo "  kept:   $(list "${kept[@]}")"
if [[ ${#generated[@]} -gt 0 ]]; then
    echo "  generated values for:$(list "${generated[@]}")"
    echo "  Copy each where it belongs (Razorpay/Shiprocket dashboards, the storefront,"
    echo "  operators) and back up storage_pii_key: without it the stored customer"
    echo "  data cannot be read."
    if [[ $encrypt == yes ]]; then
        echo "  Read one with: systemd-creds decrypt --name=NAME $dir/NAME.cred -"
    else
        echo "  Read one with: cat $dir/NAME"
    fi
fi
if [[ ${#missing[@]} -gt 0 ]]; then
    echo "  still missing:$(list "${missing[@]}")"
    echo "dropshipd will not start until they exist; run this script again." >&2
    exit 1
fi
