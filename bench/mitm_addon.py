"""mitmproxy addon for `make bench`: mitmproxy doing the sidecar's job.

mitmdump runs in reverse-proxy mode towards the tokenizer (plain HTTP) and serves a static
certificate for the API names. For each request this addon
- drops the dummy Authorization (and anything the client sent as Proxy-Tokenizer),
- adds `Proxy-Tokenizer: <sealed>` for the host named by the client's TLS SNI,
- sets `Host` to that name (origin-form + Host, which the tokenizer accepts),
and streams every response (needed for server-sent events; proxypilot and nginx stream too).

Sealed secrets come from the environment: PP_SEALED_<HOST>, HOST upper-cased with dots and
dashes as underscores (PP_SEALED_API_GITHUB_COM).
"""

import os

from mitmproxy import http


def _env_name(host: str) -> str:
    return "PP_SEALED_" + host.upper().replace(".", "_").replace("-", "_")


class Sidecar:
    def __init__(self):
        self.sealed = {}

    def _sealed_for(self, host: str):
        if host not in self.sealed:
            self.sealed[host] = os.environ.get(_env_name(host))
        return self.sealed[host]

    def request(self, flow: http.HTTPFlow):
        host = (flow.client_conn.sni or "").lower()
        sealed = self._sealed_for(host) if host else None
        if sealed is None:
            flow.response = http.Response.make(421, b"no route for this name\n")
            return
        for name in ("authorization", "proxy-tokenizer", "proxy-authorization"):
            flow.request.headers.pop(name, None)
        flow.request.headers["Proxy-Tokenizer"] = sealed
        flow.request.host_header = host

    def responseheaders(self, flow: http.HTTPFlow):
        flow.response.stream = True


addons = [Sidecar()]
