"""setuptools shim: the metadata is in setup.cfg. This file adds one build step: the top-level hparams/
(EasyEdit's convention: hparams/<ALG>/<model>.yaml) is copied into the wheel as easyedit_kne/hparams_files/,
where `KNEHyperParams.from_hparams("llama-7b")` finds it when the package runs outside a checkout."""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


class BuildPyWithHparams(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads hparams/ of the checkout itself
        source = HERE / "hparams"
        files = sorted(source.glob("*/*.yaml"))
        if not files:
            raise FileNotFoundError(f"no hparams/<ALG>/*.yaml under {source}: the wheel would ship none")
        for file in files:
            target = Path(self.build_lib) / "easyedit_kne" / "hparams_files" / file.relative_to(source)
            self.mkpath(str(target.parent))
            self.copy_file(str(file), str(target))


setup(cmdclass={"build_py": BuildPyWithHparams})
