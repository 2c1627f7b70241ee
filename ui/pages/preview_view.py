"""The sample preview on the Datasets page: what the model sees of one annotation line —
its images and tiles, the conversation rendered with the template with the trained spans
highlighted, and the token counts (``GET /api/datasets/{id}/samples/{n}``)."""

from __future__ import annotations

import gradio as gr

from ui.client import ApiError
from ui.session import Sessions
from ui.widgets import badge, cards, esc, notice, number, table


def _image_src(im: dict, link) -> str | None:  # noqa: ANN001
    url = im.get("url")
    return link(url.removeprefix("/api")) if isinstance(url, str) else None


def _figure(src: str, im: dict, k: int, width: int = 180) -> str:
    """The image with the tile grid drawn over it (``source_boxes`` are in the image's pixels)."""
    scale = width / im["width"] if im.get("width") else 0
    boxes = "".join(f"<div class='vl-tilebox' style='left:{a * scale:.0f}px;top:{b * scale:.0f}px;"
                    f"width:{(c - a) * scale:.0f}px;height:{(d - b) * scale:.0f}px'></div>"
                    for a, b, c, d in (im.get("source_boxes") or [])) if scale else ""
    return (f"<div class='vl-figure' style='width:{width}px'><img src='{esc(src)}' alt='image {k}' "
            f"style='width:{width}px'/>{boxes}</div>")


def images_html(images: list[dict], link=lambda u: u) -> str:  # noqa: ANN001
    rows = []
    for k, im in enumerate(images, 1):
        src = _image_src(im, link)
        thumb = _figure(src, im, k) if src else ""
        if "error" in im:
            rows.append([thumb or str(k), f"<span class='vl-mono'>{esc(im['path'])}</span>", badge("error"),
                         esc(im["error"]), "", ""])
            continue
        grid = im.get("grid") or ["?", "?"]
        tiles = f"{grid[0]}×{grid[1]}" + (" + thumbnail" if im.get("thumbnail") else "")
        rows.append([thumb or str(k), f"<span class='vl-mono'>{esc(im['path'])}</span>",
                     esc(f"{im.get('width')}×{im.get('height')} {im.get('format') or ''}"),
                     esc(tiles), number(im.get("tiles")), number(im.get("max_tiles"))])
    return table(["", "Image", "Size", "Tiles grid", "Tiles", "Budget"], rows, "This sample has no image.")


def tiles_html(images: list[dict]) -> str:
    out = []
    for im in images:
        urls = im.get("tile_images") or []
        if urls:
            grid = im.get("grid") or ["?", "?"]
            out.append(f"<div class='vl-legend'>{esc(im['path'])}: {grid[0]}×{grid[1]} tiles"
                       + (" + thumbnail (last)" if im.get("thumbnail") else "") + ", in the order the model "
                       "reads them</div><div class='vl-tiles'>"
                       + "".join(f"<img src='{esc(u)}' alt='tile {k}'/>" for k, u in enumerate(urls, 1)) + "</div>")
    return "".join(out)


def conversation_html(pv: dict) -> str:
    segments = pv.get("segments")
    if not segments:
        turns = pv.get("conversations") or []
        return "".join(f"<div class='vl-turn'><div class='vl-turn-role'>{esc(t.get('from'))}</div>"
                       f"<div>{esc(t.get('value'))}</div></div>" for t in turns if isinstance(t, dict))
    parts = []
    for seg in segments:
        if "image" in seg and seg.get("image") is not None:
            parts.append(f"<span class='vl-imgtok'>&lt;image {seg['image'] + 1}&gt;</span>")
        elif seg.get("trained"):
            parts.append(f"<span class='vl-trained'>{esc(seg['text'])}</span>")
        else:
            parts.append(esc(seg["text"]))
    legend = ("<div class='vl-legend'><span class='vl-trained'>highlighted</span> text is trained on (the loss "
              "covers it); the rest is context. Template <b>" + esc(pv.get("template")) + "</b>.</div>")
    return legend + f"<div class='vl-render' id='vl-sample-text'>{''.join(parts)}</div>"


def tokens_html(pv: dict) -> str:
    counts = (pv.get("tokens") or {}).get("counts")
    if not counts:
        return ""
    limit = counts.get("max_seq_length")
    return cards([("Tokens", number(counts.get("total")), f"of max {number(limit)}" if limit else ""),
                  ("Text tokens", number(counts.get("text")), ""), ("Image tokens", number(counts.get("image")), ""),
                  ("Trained tokens", number(counts.get("trained")), "in the loss")])


def preview_html(pv: dict, line: int, link=lambda u: u) -> str:  # noqa: ANN001
    issues = pv.get("issues") or []
    part = " (validation split)" if pv.get("part") == "validation" else ""
    head = (f"<div class='vl-h3'>Sample on line {line}{part}" + (f" · id <span class='vl-mono'>{esc(pv['id'])}</span>"
            if pv.get("id") is not None else "") + "</div>")
    warn = ""
    if issues:
        warn = notice("warn" if all(i.get("severity") != "error" for i in issues) else "error",
                      f"{len(issues)} problem(s) in this sample",
                      "<ul>" + "".join(f"<li>{esc(i.get('message'))}</li>" for i in issues) + "</ul>")
    return (head + warn + tokens_html(pv) + images_html(pv.get("images") or [], link)
            + tiles_html(pv.get("images") or [])
            + "<div class='vl-h3'>Conversation as the model sees it</div>" + conversation_html(pv))


def build_controls(sessions: Sessions, selected: gr.State) -> None:
    gr.HTML("<div class='vl-h3'>Sample preview</div>")
    with gr.Row(equal_height=False, elem_classes="vl-align-end"):
        line = gr.Number(label="Sample (line of the uploaded file)", value=1, precision=0, minimum=1,
                         elem_id="vl-sample-line", scale=3)
        go = gr.Button("Preview sample", elem_id="vl-sample-btn", scale=1, variant="secondary")
    out = gr.HTML(elem_id="vl-sample")

    def on_preview(ds_id: int | None, n: float | None, request: gr.Request) -> str:
        if ds_id is None:
            return notice("info", "Open a dataset first")
        n = int(n or 1)
        try:
            pv = sessions.api(request).sample(int(ds_id), n, tiles="true")
        except ApiError as e:
            if e.status == 404 and str(e) == "Not Found":
                return notice("warn", "This server cannot preview samples",
                              "<div>The API has no <code>/datasets/{id}/samples/{n}</code> endpoint.</div>")
            return notice("error", f"Cannot preview line {n}", f"<div>{esc(e)}</div>")
        return preview_html(pv, n, lambda path: sessions.link(request, path))

    go.click(on_preview, [selected, line], out)
    line.submit(on_preview, [selected, line], out)
