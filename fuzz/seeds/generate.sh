#!/usr/bin/env bash
# Regenerates the seed corpora in fuzz/seeds/<target>/ with openssl. The generated files are
# committed; re-running this replaces them with new keys (and new bytes), which is harmless.
# PKCS#12 seeds use the password "fuzz" (the material target retries with it on PasswordRequired)
# or none at all, with a low iteration count so each execution stays fast.
set -euo pipefail
cd "$(dirname "$0")"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"

days=3650
cat > ca.cnf <<'CNF'
[ca]
default_ca = ca_default
[ca_default]
dir = .
database = index.txt
new_certs_dir = .
serial = serial
crlnumber = crlnumber
default_md = sha256
default_crl_days = 30
policy = policy_any
[policy_any]
commonName = supplied
[v3_root]
basicConstraints = critical, CA:true
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[v3_inter]
basicConstraints = critical, CA:true, pathlen:0
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
crlDistributionPoints = URI:http://127.0.0.1:1/root.crl
authorityInfoAccess = caIssuers;URI:http://127.0.0.1:1/root.cer
[v3_leaf]
basicConstraints = CA:false
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth, clientAuth
subjectAltName = DNS:smp.example.net, DNS:*.example.com, IP:127.0.0.1, IP:::1, email:a@example.net
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
crlDistributionPoints = URI:http://127.0.0.1:1/issuing.crl
authorityInfoAccess = caIssuers;URI:http://127.0.0.1:1/issuing.cer
CNF

openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out root.key 2>/dev/null
openssl req -x509 -new -key root.key -subj "/CN=Fuzz Root" -days $days -sha256 \
  -config ca.cnf -extensions v3_root -out root.pem
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-384 -out inter.key 2>/dev/null
openssl req -new -key inter.key -subj "/CN=Fuzz Issuing" -out inter.csr
openssl x509 -req -in inter.csr -CA root.pem -CAkey root.key -CAcreateserial -days $days \
  -sha384 -extfile ca.cnf -extensions v3_inter -out inter.pem 2>/dev/null
# RSA 2048 leaf (the smallest size the provider loads for key_matches_cert).
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out leaf.key 2>/dev/null
openssl req -new -key leaf.key -subj "/CN=smp.example.net/O=Fuzz" -out leaf.csr
openssl x509 -req -in leaf.csr -CA inter.pem -CAkey inter.key -CAcreateserial -days 397 \
  -sha256 -extfile ca.cnf -extensions v3_leaf -out leaf.pem 2>/dev/null
# Ed25519 self-signed leaf and an EC leaf.
openssl genpkey -algorithm ED25519 -out ed.key
openssl req -x509 -new -key ed.key -subj "/CN=ed25519.example.net" -days 30 \
  -addext "subjectAltName=DNS:ed25519.example.net" -out ed.pem
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ecleaf.key 2>/dev/null
openssl req -new -key ecleaf.key -subj "/CN=ec.example.net" -out ecleaf.csr
openssl x509 -req -in ecleaf.csr -CA inter.pem -CAkey inter.key -CAcreateserial -days 397 \
  -sha384 -extfile ca.cnf -extensions v3_leaf -out ecleaf.pem 2>/dev/null
# RSA-PSS signed self-signed certificate (the parameters carry the hash).
openssl req -x509 -new -key leaf.key -subj "/CN=pss.example.net" -days 30 -sha256 \
  -sigopt rsa_padding_mode:pss -sigopt rsa_pss_saltlen:32 -out pss.pem

der() { openssl x509 -in "$1" -outform DER -out "$2"; }

# --- material: PEM, DER, PKCS#12 in the forms administrators have them -------------------
m="$OLDPWD/material"
rm -rf "$m"; mkdir -p "$m"
cat leaf.pem inter.pem root.pem leaf.key > "$m/pem_chain_with_key.pem"
cat root.pem inter.pem ecleaf.pem > "$m/pem_chain_reversed.pem"
openssl pkey -in ecleaf.key -out ecleaf.pkcs8.pem
openssl ec -in ecleaf.key -out ecleaf.sec1.pem 2>/dev/null
openssl rsa -in leaf.key -traditional -out leaf.pkcs1.pem 2>/dev/null
cat ecleaf.sec1.pem ecleaf.pem > "$m/pem_sec1_key_first.pem"
cat leaf.pkcs1.pem leaf.pem > "$m/pem_pkcs1_key.pem"
cat ed.pem ed.key > "$m/pem_ed25519.pem"
der leaf.pem "$m/leaf.der"
der ed.pem "$m/ed25519.der"
openssl pkcs8 -topk8 -in ecleaf.key -passout pass:fuzz -v2 aes-256-cbc -iter 1 \
  -out "$m/pem_encrypted_key.pem"
# AES-256 PKCS#12 (OpenSSL 3 default), password "fuzz", MAC and PBKDF2 with 1 iteration.
openssl pkcs12 -export -inkey ecleaf.key -in ecleaf.pem -certfile inter.pem -name fuzz \
  -passout pass:fuzz -iter 1 -nomaciter -out "$m/p12_aes_fuzz.p12"
# Legacy 3DES/RC2 PKCS#12 (what Windows Server 2016 reads), password "fuzz".
openssl pkcs12 -export -legacy -inkey leaf.key -in leaf.pem -certfile inter.pem -name fuzz \
  -passout pass:fuzz -iter 1 -nomaciter -out "$m/p12_legacy_fuzz.p12"
# 3DES for both bags with a SHA-1 MAC: what write_pkcs12(.., TripleDes) writes.
openssl pkcs12 -export -inkey leaf.key -in leaf.pem -name fuzz -passout pass:fuzz -iter 1 \
  -nomaciter -keypbe PBE-SHA1-3DES -certpbe PBE-SHA1-3DES -macalg sha1 \
  -out "$m/p12_3des_fuzz.p12"
# Empty password (Windows "no password" exports): read with None.
openssl pkcs12 -export -inkey ecleaf.key -in ecleaf.pem -name fuzz \
  -passout pass: -iter 1 -nomaciter -out "$m/p12_aes_empty.p12"
# No MAC, no encryption: lets the fuzzer mutate the bags themselves without breaking a MAC.
openssl pkcs12 -export -inkey ecleaf.key -in ecleaf.pem -certfile inter.pem -name fuzz \
  -passout pass: -nomac -keypbe NONE -certpbe NONE -out "$m/p12_plain_nomac.p12"
openssl pkcs12 -export -nokeys -in root.pem -passout pass: -nomac -certpbe NONE \
  -out "$m/p12_certs_only_nomac.p12"

# --- crl: DER and PEM CRLs, with and without revoked entries -----------------------------
c="$OLDPWD/crl"
rm -rf "$c"; mkdir -p "$c"
touch index.txt; echo 1000 > crlnumber; echo 01 > serial
cp inter.pem ca.pem; cp inter.key ca.key
openssl ca -config ca.cnf -gencrl -cert inter.pem -keyfile inter.key -out empty.crl.pem 2>/dev/null
openssl ca -config ca.cnf -revoke leaf.pem -cert inter.pem -keyfile inter.key \
  -crl_reason keyCompromise 2>/dev/null
openssl ca -config ca.cnf -revoke ecleaf.pem -cert inter.pem -keyfile inter.key 2>/dev/null
openssl ca -config ca.cnf -gencrl -cert inter.pem -keyfile inter.key -out revoked.crl.pem 2>/dev/null
openssl crl -in revoked.crl.pem -outform DER -out "$c/revoked.crl"
openssl crl -in empty.crl.pem -outform DER -out "$c/empty.crl"
cp revoked.crl.pem "$c/revoked.crl.pem"
printf '<html><body>404 Not Found</body></html>\n' > "$c/html_page.txt"
# The issuer the crl target verifies CRL signatures against (include_bytes! in crl.rs).
der inter.pem "$c/../issuer.der"

# --- cert_chain: concatenated DER certificates, leaf first ---------------------------------
k="$OLDPWD/cert_chain"
rm -rf "$k"; mkdir -p "$k"
cat <(der leaf.pem /dev/stdout) <(der inter.pem /dev/stdout) <(der root.pem /dev/stdout) \
  > "$k/leaf_inter_root.der"
cat <(der ecleaf.pem /dev/stdout) <(der root.pem /dev/stdout) <(der inter.pem /dev/stdout) \
  > "$k/ecleaf_root_inter.der"
cat <(der leaf.pem /dev/stdout) <(der root.pem /dev/stdout) > "$k/leaf_missing_inter.der"
der ed.pem "$k/ed25519_self_signed.der"
cat <(der pss.pem /dev/stdout) <(der pss.pem /dev/stdout) > "$k/pss_twice.der"
cat <(der ecleaf.pem /dev/stdout) <(der inter.pem /dev/stdout) <(der ed.pem /dev/stdout) \
  > "$k/ecleaf_inter_stray.der"
chmod 644 "$m"/* "$c"/* "$k"/* "$c/../issuer.der"
echo "seeds written:"; ls -l "$m" "$c" "$k"
