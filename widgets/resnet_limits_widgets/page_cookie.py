"""An invisible widget that lets Voila shut a page's kernel down when the page closes.

Voila 0.5.13 sends ``POST voila/api/shutdown/<kernel id>`` from the page's ``beforeunload``
handler, with the form field ``_xsrf`` read from the page's ``_xsrf`` cookie. Its notebook page
handler never sets that cookie, so in a fresh browser the field is empty, jupyter_server rejects
the request with "403: '_xsrf' argument missing from POST", and the kernel (with its worker
process) runs until the server stops. Tornado's XSRF check compares the form field with the
cookie, both sent by the browser, so a random token that the page sets itself passes it, while
another site still cannot set a cookie for this origin or read it.
"""

from __future__ import annotations

import anywidget

_ESM = """
function render({ el }) {
  el.style.display = "none";
  if (/(^|;\\s*)_xsrf=/.test(document.cookie)) {
    return;  // a Jupyter server page has set it already
  }
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  const token = Array.from(bytes, (byte) => byte.toString(16).padStart(2, "0")).join("");
  document.cookie = `_xsrf=${token}; path=/; SameSite=Strict`;
}
export default { render };
"""


class XsrfCookie(anywidget.AnyWidget):
    """A widget that sets the page's ``_xsrf`` cookie when it is missing, and shows nothing."""

    _esm = _ESM


def xsrf_cookie() -> XsrfCookie:
    """Return a new ``XsrfCookie`` to put in an app's widget tree."""
    widget = XsrfCookie()
    widget.add_class("xsrf-cookie")
    return widget
