#!/usr/bin/env bash
# Creates (or, with --rotate, replaces) the Ward CA and distributes its root:
#   - Secret ward-system/ward-ca (ca.pem, ca-key.pem): the control plane's CA;
#   - ConfigMap ward-ca-bundle (bundle.pem) in ward-system and in every
#     namespace labelled ward.io/inject=enabled (the sidecars mount it);
#   - with --jwks, ConfigMap ward-system/ward-k8s-jwks: the cluster's
#     service-account token keys, for JWKS attestation instead of TokenReview;
#   - the caBundle of MutatingWebhookConfiguration ward-injector.
# Needs kubectl with cluster-admin, base64 and `ward` on PATH.
# Usage: install-ca.sh [--trust-domain cluster.local] [--rotate] [--jwks] [--extra-namespace NS ...]
set -euo pipefail

trust_domain=cluster.local
rotate=false
jwks=false
extra_namespaces=()
while (($#)); do
    case "$1" in
        --trust-domain) trust_domain="$2"; shift 2 ;;
        --rotate) rotate=true; shift ;;
        --jwks) jwks=true; shift ;;
        --extra-namespace) extra_namespaces+=("$2"); shift 2 ;;
        *) echo "usage: $0 [--trust-domain TD] [--rotate] [--jwks] [--extra-namespace NS]..." >&2; exit 2 ;;
    esac
done

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
ns=ward-system

if kubectl -n "$ns" get secret ward-ca >/dev/null 2>&1 && ! $rotate; then
    echo "install-ca: Secret ward-ca exists; distributing its root (use --rotate to replace it)"
    kubectl -n "$ns" get secret ward-ca -o jsonpath='{.data.ca\.pem}' | base64 -d >"$work/ca.pem"
else
    ward ca init --data-dir "$work/data" --trust-domain "$trust_domain" >/dev/null
    cp "$work/data/ca/ca.pem" "$work/ca.pem"
    bundle="$work/ca.pem"
    if $rotate; then
        # Trust old and new roots until every workload holds a new SVID.
        kubectl -n "$ns" get configmap ward-ca-bundle -o jsonpath='{.data.bundle\.pem}' >"$work/old.pem" || true
        cat "$work/ca.pem" "$work/old.pem" >"$work/bundle.pem"
        bundle="$work/bundle.pem"
    fi
    kubectl -n "$ns" create secret generic ward-ca \
        --from-file=ca.pem="$work/data/ca/ca.pem" \
        --from-file=ca-key.pem="$work/data/ca/ca-key.pem" \
        --dry-run=client -o yaml | kubectl apply -f -
    # Only when rotating is the bundle another file (old and new roots).
    [ "$bundle" = "$work/ca.pem" ] || cp "$bundle" "$work/ca.pem"
fi

namespaces=("$ns" "${extra_namespaces[@]}")
mapfile -t -O "${#namespaces[@]}" namespaces < <(kubectl get namespaces -l ward.io/inject=enabled -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}')
for n in "${namespaces[@]}"; do
    [ -n "$n" ] || continue
    kubectl -n "$n" create configmap ward-ca-bundle --from-file=bundle.pem="$work/ca.pem" \
        --dry-run=client -o yaml | kubectl apply -f -
done

if $jwks; then
    kubectl get --raw /openid/v1/jwks >"$work/jwks.json"
    kubectl -n "$ns" create configmap ward-k8s-jwks --from-file=jwks.json="$work/jwks.json" \
        --dry-run=client -o yaml | kubectl apply -f -
fi

ca_bundle="$(base64 -w0 <"$work/ca.pem")"
kubectl patch mutatingwebhookconfiguration ward-injector --type=json -p "[
  {\"op\": \"add\", \"path\": \"/webhooks/0/clientConfig/caBundle\", \"value\": \"$ca_bundle\"},
  {\"op\": \"add\", \"path\": \"/webhooks/1/clientConfig/caBundle\", \"value\": \"$ca_bundle\"}
]"
kubectl -n "$ns" rollout restart deployment/ward-control-plane
echo "install-ca: done"
