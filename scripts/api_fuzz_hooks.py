"""Schemathesis hooks for scripts/api-fuzz.sh.

A node may rightly answer 503 (a peer unreachable, a write not durable in time, a node that is
not ready): that is allowed only with a Retry-After header. Any other 5xx is a failure. This
check replaces schemathesis' own not_a_server_error, which the script excludes.
"""

import schemathesis


def _header(response, name):
    headers = response.headers or {}
    for key, value in headers.items():
        if key.lower() == name.lower():
            return value
    return None


@schemathesis.check
def no_server_error_but_503_with_retry_after(ctx, response, case):
    status = response.status_code
    if status < 500:
        return None
    if status == 503 and _header(response, "Retry-After"):
        return None
    raise AssertionError(
        f"{case.method} {case.formatted_path} answered {status}"
        + (" without Retry-After" if status == 503 else "")
    )
