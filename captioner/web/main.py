"""``python app.py``: read the arguments (``web.cli``), then load the model, build the page and serve it
(``web.server``; on a ZeroGPU Space, Gradio's own launch, which the ``spaces`` package needs to start
its GPU workers, behind the Space's proxy). A model that cannot be loaded stops the app with a
message unless the fallback to the bundled model is asked for."""

from __future__ import annotations

import sys

from captioner.web.cli import max_batch_size, parser


def main(argv: list[str] | None = None) -> None:
    options = parser()
    args = options.parse_args(argv)
    from captioner.core.backends.choice import resolve_backend  # the model stack, once the arguments are read
    from captioner.core.devices import select_device
    from captioner.core.errors import CaptionerError

    try:
        batch_size = max_batch_size(args.max_batch_size)
        # e.g. onnx without onnxruntime, or int8 with the torch backend: say so and stop
        resolve_backend(args.backend, select_device(), args.precision)
    except (ValueError, CaptionerError) as error:
        options.error(str(error))
    from captioner.web.app import build_app, launch_options
    from captioner.web.server import Server
    from captioner.web.zerogpu import is_zero_gpu

    built = build_app(args.model, batch_size=batch_size, backend=args.backend, precision=args.precision,
                      fallback=args.fallback_to_bundled)
    notice = built.state.choice.notice
    if built.state.captioner is None:
        built.state.close()
        hint = "" if args.fallback_to_bundled else " (--fallback-to-bundled serves the bundled model instead)"
        options.exit(2, f"{options.prog}: error: {notice}{hint}\n")
    if notice:
        print(f"{options.prog}: {notice}", file=sys.stderr)
    if is_zero_gpu():  # the spaces package starts its GPU workers when Gradio launches the page itself
        built.demo.launch(**launch_options())
    else:
        Server(built.demo, launch_options()).run()
