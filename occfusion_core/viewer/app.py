"""The viewer's browser UI on viser (https://viser.studio): the avatar as Gaussian splats or the
body as a mesh, posed by a frame slider over the training frames or over a motion.

Run it as ``python -m occfusion_core.viewer results/<subject>/<variant>`` (docs/viewer.md).
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import signal
import sys
import threading
from pathlib import Path

from ..io import InputError
from .scene import AvatarScene, find_viewer_inputs

SHOW_AVATAR = "Gaussian avatar"
SHOW_MESH = "Body mesh"
MESH_COLOUR = (180, 190, 205)


class ViewerApp:
    """A viser server showing one :class:`AvatarScene`; every browser tab shares the same state.

    Args:
        scene: what to show.
        host: address to bind (127.0.0.1: this machine only).
        port: port to bind; 0 picks a free one (viser moves on to the next port when one is taken).
        title: shown at the top of the control panel.
    """

    def __init__(self, scene: AvatarScene, host: str = "127.0.0.1", port: int = 8080, title: str = "OccFusion"):
        import viser

        self.scene = scene
        self._lock = threading.Lock()
        self.server = viser.ViserServer(host=host, port=port, label=title, verbose=False)
        view = scene.initial_view()
        self.server.scene.set_up_direction(tuple(float(x) for x in view.up))
        camera = self.server.initial_camera
        camera.position, camera.look_at, camera.up, camera.fov = view.position, view.look_at, view.up, view.fov

        gui = self.server.gui
        gui.add_markdown(f"**{title}**")
        self.show = gui.add_dropdown("Show", (SHOW_AVATAR, SHOW_MESH), initial_value=SHOW_AVATAR)
        self.sequence = gui.add_dropdown(
            "Poses",
            tuple(scene.sequences),
            initial_value=scene.training.name,
            hint="the training frames, or a motion the subject never performed",
        )
        self.frame = gui.add_slider("Frame", min=0, max=max(len(scene.training) - 1, 1), step=1, initial_value=0)
        self.play = gui.add_checkbox("Play", initial_value=False)
        self.status = gui.add_markdown("")
        gui.add_markdown(scene.description)

        self.show.on_update(lambda _: self.update())
        self.sequence.on_update(lambda _: self._sequence_changed())
        self.frame.on_update(lambda _: self.update())
        self.update()

    @property
    def url(self) -> str:
        host = self.server.get_host()
        return f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{self.server.get_port()}"

    def _sequence_changed(self) -> None:
        count = len(self.scene.sequences[self.sequence.value])
        with self._lock:
            self.frame.max = max(count - 1, 1)  # a slider needs max > min, even over a one-frame clip
        if self.frame.value > count - 1:
            self.frame.value = 0  # calls update() itself
        else:
            self.update()

    def update(self) -> None:
        """Show the selected sequence's selected frame as splats or as a mesh."""
        with self._lock:
            sequence = self.scene.sequences[self.sequence.value]
            index = min(int(self.frame.value), len(sequence) - 1)
            pose = sequence.pose(index)
            show_avatar = self.show.value == SHOW_AVATAR
            with self.server.atomic():
                if show_avatar:
                    splats = self.scene.splats(pose, self.scene.camera_for(sequence, index))
                    self.server.scene.add_gaussian_splats(
                        "/avatar", splats.centers, splats.covariances, splats.rgbs, splats.opacities
                    )
                    self.server.scene.remove_by_name("/body")
                else:
                    mesh = self.scene.mesh(pose)
                    self.server.scene.add_mesh_simple("/body", mesh.vertices, mesh.faces, color=MESH_COLOUR)
                    self.server.scene.remove_by_name("/avatar")
            self.status.content = f"{sequence.name}: frame {index + 1} of {len(sequence)}"

    def run(self, stop: threading.Event) -> None:
        """Serve until ``stop`` is set, advancing the frame at the sequence's rate while Play is ticked."""
        while not stop.wait(1.0 / max(self.scene.sequences[self.sequence.value].fps, 1.0)):
            if self.play.value:
                count = len(self.scene.sequences[self.sequence.value])
                self.frame.value = (int(self.frame.value) + 1) % count

    def stop(self) -> None:
        self.server.stop()


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m occfusion_core.viewer",
        description="Show a trained avatar in the browser: orbit it, scrub through the training poses and motions, "
        "switch between the Gaussian avatar and the body mesh (docs/viewer.md).",
    )
    parser.add_argument("variant_dir", type=Path, help="a variant's results folder, results/<subject>/<variant>")
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1, this machine only; 0.0.0.0 exposes it to the network)",
    )
    parser.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 picks a free one)")
    parser.add_argument(
        "--body-model",
        type=Path,
        default=None,
        help="the SMPL file the workflow was configured with (default: results/body_model/proxy_smpl.pkl)",
    )
    parser.add_argument(
        "--motion",
        type=Path,
        action="append",
        default=[],
        help="a motion file to offer besides results/motions/*.npz (repeatable)",
    )
    parser.add_argument("--device", default="cpu", help="torch device for posing the avatar (default cpu; auto, cuda)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("websockets").setLevel(logging.WARNING)  # one line per connection otherwise
    if importlib.util.find_spec("viser") is None:  # before the model loads, not after
        raise SystemExit("error: the viewer needs viser: pip install 'torch==<yours>' -e '.[viewer]'")
    try:
        inputs = find_viewer_inputs(args.variant_dir, args.body_model, args.motion)
        scene = AvatarScene.load(inputs, args.device)
    except InputError as err:
        raise SystemExit(f"error: {err}") from None

    variant = inputs.variant_dir.resolve()
    app = ViewerApp(scene, args.host, args.port, title=f"OccFusion: {variant.parent.name} / {variant.name}")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(f"viewer: {app.url}  ({scene.description}; Ctrl-C stops it)", flush=True)
    try:
        app.run(stop)
    except KeyboardInterrupt:
        pass
    finally:
        app.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
