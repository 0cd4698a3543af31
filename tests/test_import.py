"""`import deltajax` is cheap: the Pallas stack loads only when backend="pallas" is used, and
models, layers and train resolve on first use. A subprocess, because this process has long
imported everything."""

import os
import pathlib
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import sys
    import deltajax
    import jax.numpy as jnp

    assert "deltajax.models" not in sys.modules and "deltajax.train" not in sys.modules
    q = jnp.ones((1, 4, 2, 4))
    beta = jnp.full((1, 4, 2), 0.5)
    for backend in ("recurrent", "chunked", "auto"):
        deltajax.ops.delta_rule(q, q, q, beta, backend=backend)[0].block_until_ready()
    pallas = sorted(m for m in sys.modules
                    if m.startswith(("pallas_kernels", "jax.experimental.pallas"))
                    or m == "deltajax.ops.pallas")
    assert not pallas, pallas
    assert deltajax.models.LanguageModel and deltajax.layers.DeltaNet and deltajax.train.fit
    assert {"models", "layers", "train"} <= set(dir(deltajax))
    print("ok")
""")


def test_import_deltajax_loads_no_pallas_on_cpu_and_resolves_the_subpackages():
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                            timeout=300, cwd=pathlib.Path(__file__).parents[1],
                            env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]
