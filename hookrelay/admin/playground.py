"""The playground: a mapping and a payload in, the Result out, updated as you type.

The page works without JavaScript (`Try` posts the form and the page comes back with its
Result); with it, admin.js posts the fields as JSON to /admin/playground/try 300 ms after the last
keystroke and puts the answer's HTML, escaped on the server, in the Result region. `Download`
always works; saving to mappings/ only with `admin: {edit_mappings: true}` in config.yaml, after
the same checks the relay makes on reload, and atomically, so a reload never reads half a file.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from flask import abort, flash, jsonify, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue

from hookrelay import history, preflight
from hookrelay.admin import bp, relay, trial

logger = logging.getLogger(__name__)

MAX_TEXT = 1024 * 1024  # bytes of mapping and payload a trial takes


@bp.route("/playground", methods=["GET", "POST"])
def playground() -> ResponseReturnValue:
    """GET: fill the fields from a mapping file, a stored event or a sample; POST: try them."""
    config = relay().config
    if request.method == "POST":
        fields = _fields(request.form)
    else:
        fields = _loaded()
    result = None
    if fields["mapping"].strip() or fields["payload"].strip():
        result = trial.run(
            config, fields["name"], fields["mapping"], fields["payload"], fields["format"]
        )
    return render_template(
        "admin/playground.html",
        fields=fields,
        result=result,
        files=trial.mapping_files(config),
        samples=trial.samples(config),
        can_save=config.edit_mappings,
        on_dyno=bool(os.environ.get("DYNO")),
    )


@bp.post("/playground/try")
def try_() -> ResponseReturnValue:
    """The Result for the JSON {mapping, payload, name, format}: as `run` gives it, with the
    region's HTML."""
    request.max_content_length = 2 * MAX_TEXT
    given = request.get_json(silent=True)
    if not isinstance(given, dict):
        abort(400, "expected a JSON object: {mapping, payload, name, format}")
    fields = _fields(given)
    result = trial.run(
        relay().config, fields["name"], fields["mapping"], fields["payload"], fields["format"]
    )
    html = render_template("admin/result.html", result=result)
    return jsonify({**result, "html": html})


@bp.post("/playground/download")
def download() -> ResponseReturnValue:
    """The Mapping field as a file, whatever it holds."""
    fields = _fields(request.form)
    name = fields["name"] if trial.NAME.fullmatch(fields["name"]) else "mapping"
    logger.info("admin %s: download mapping %s", request.remote_addr, name)
    return (
        fields["mapping"],
        200,
        {
            "Content-Type": "application/yaml; charset=utf-8",
            "Content-Disposition": f'attachment; filename="{name}.yaml"',
        },
    )


@bp.post("/playground/save")
def save() -> ResponseReturnValue:
    """Write the mapping to mappings/<name>.yaml when allowed and valid (its tests pass too)."""
    r = relay()
    if not r.config.edit_mappings:
        abort(403, "saving is off: set admin: {edit_mappings: true} in config.yaml")
    fields = _fields(request.form)
    name = fields["name"]
    if not trial.NAME.fullmatch(name):
        abort(400, "a mapping's name uses only letters, digits, '_' and '-'")
    mapping, problems, _ = trial.compile_text(r.config, name, fields["mapping"])
    tests = trial.tests_of(r.config, mapping, fields["format"]) if mapping else []
    if problems or any(t.ran and not t.passed for t in tests):
        flash(f"Not saved: mappings/{name}.yaml has problems; the Result says which.")
        return playground()
    _write(trial.mappings_dir(r.config) / f"{name}.yaml", fields["mapping"])
    logger.info("admin %s: save mapping %s", request.remote_addr, name)
    if r.reload_if_changed() or not r.config_problems:
        flash(f"Saved mappings/{name}.yaml; the relay runs it now.")
    else:
        flash(f"Saved mappings/{name}.yaml, but the configuration was refused: see the overview.")
    return redirect(url_for("admin.playground", file=name))


def _write(path: Path, text: str) -> None:
    """Write through a temporary file in the same folder, then rename: a reader (the hot
    reload of any process) sees the old file or the new one, never half of one."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def _fields(given: Any) -> dict[str, str]:
    """The playground's fields from a form or a JSON object; the format, when not given, is
    that of the sources the named mapping is routed from."""
    fields = {k: str(given.get(k) or "") for k in ("mapping", "payload", "name", "format")}
    fields["name"] = fields["name"].strip()
    if fields["format"] not in ("qualifio", "json"):
        fields["format"] = preflight.format_of(relay().config, fields["name"])
    return fields


def _loaded() -> dict[str, str]:
    """The fields a GET asks for: ?file= a mapping file, ?event= a stored event's payload or
    ?sample= a sample's; only names from the lists the page offers are read."""
    config, args = relay().config, request.args
    fields = {"mapping": "", "payload": "", "name": "", "format": ""}
    if args.get("file") in trial.mapping_files(config):
        fields["name"] = args["file"]
        path = trial.mappings_dir(config) / f"{args['file']}.yaml"
        fields["mapping"] = path.read_text(encoding="utf-8")
    if args.get("sample") in trial.samples(config):
        fields["payload"] = (config.path.parent / "samples" / args["sample"]).read_text("utf-8")
    elif args.get("event"):
        found = history.event(relay().store, args["event"].strip())
        if found is None:
            flash(f"No stored event with id {args['event'].strip()}.")
        else:
            payload = json.loads(found["payload"])
            fields["payload"] = json.dumps(payload, ensure_ascii=False, indent=2)
            fields["format"] = found["format"]
    fields["name"] = fields["name"] or args.get("name", "").strip()
    fields["format"] = args.get("format", fields["format"])
    return _fields(fields)
