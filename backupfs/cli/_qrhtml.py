"""`key export --qr-html`: a page to print, holding the key export as a QR code and as paper text.

The QR code is inline SVG drawn from the code's module matrix (no script, no network, nothing to
load), encoding the plain export text, so a phone scan gives text `key import` takes as it is.
"""

from __future__ import annotations

import html

import qrcode

QR_BORDER = 4  # modules of quiet zone, as the QR standard asks
MODULE_PX = 4


def qr_matrix(text: str) -> list[list[bool]]:
    """The QR code's modules (True is dark), quiet zone included; error correction level M."""
    qr = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_M, border=QR_BORDER)
    qr.add_data(text.encode("ascii"))
    qr.make(fit=True)
    return [list(row) for row in qr.get_matrix()]


def qr_svg(text: str) -> str:
    matrix = qr_matrix(text)
    size = len(matrix)
    rects = []
    for y, row in enumerate(matrix):  # one rectangle per run of dark modules in a row
        x = 0
        while x < size:
            if not row[x]:
                x += 1
                continue
            start = x
            while x < size and row[x]:
                x += 1
            rects.append(f'<rect x="{start}" y="{y}" width="{x - start}" height="1"/>')
    px = size * MODULE_PX
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {size} {size}" width="{px}" height="{px}" '
        f'shape-rendering="crispEdges"><rect width="{size}" height="{size}" fill="#fff"/>'
        f'<g fill="#000">{"".join(rects)}</g></svg>'
    )


def key_html(plain: str, paper: str, repo_id: str) -> str:
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>backupfs key of repository {html.escape(repo_id[:10])}</title>
<style>body{{font-family:sans-serif;margin:2em}} pre{{font-size:11pt}}</style></head>
<body>
<h1>backupfs key of repository {html.escape(repo_id[:10])}</h1>
<p>The repository's master key, wrapped by the password that was in use when this page was made.
Keep the page and that password apart. To restore: scan the code into a file (or type the paper
lines below), then <code>backupfs -r REPOSITORY key import FILE</code>.</p>
{qr_svg(plain)}
<pre>{html.escape(paper)}</pre>
</body></html>
"""
