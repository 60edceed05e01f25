"""Unit costs of the standard preset, measured (the input of its test's projection).

``absdsl paradox --preset standard --estimate --threads 1`` on the development VM (x86_64,
2 CPU cores shared with other sessions, load average 15 at the start and 10 at the end),
2026-12-07, the estimate's ``cpu_measured`` part: every step's cost from the process's CPU
time, which with one torch thread is what the step takes on an idle core, whatever else
runs (the wall-clock projection under that load was 31,233 s). Projected from these:
7,133 s (1.98 h). The same units project the quick preset to 957 s, which ran in 659 s on
the nearly idle machine, so the projection errs on the safe side. Re-measure after a change
that makes a domain slower or faster.
"""

from __future__ import annotations

from typing import Any

STANDARD_ESTIMATE: dict[str, Any] = {
    "step_units": {
        "pgd-box@0.1": {
            "seconds_per_example_member": 0.0005093,
            "setup_seconds": 0.01489
        },
        "grad-box@0.1": {
            "seconds_per_example_member": 0.000162,
            "setup_seconds": 0.02325
        },
        "grad-hbox@0.1": {
            "seconds_per_example_member": 0.002499,
            "setup_seconds": 0.1338
        },
        "grad-crown-ibp@0.1": {
            "seconds_per_example_member": 0.0008686,
            "setup_seconds": 0.2497
        },
        "grad-deeppoly@0.1": {
            "seconds_per_example_member": 0.005508,
            "setup_seconds": 0.108
        },
        "pgpe-box@0.1": {
            "seconds_per_example_member": 4.556e-05,
            "setup_seconds": 1.68
        },
        "pgpe-hbox@0.1": {
            "seconds_per_example_member": 0.0008419,
            "setup_seconds": 0.326
        },
        "pgpe-crown-ibp@0.1": {
            "seconds_per_example_member": 0.0007336,
            "setup_seconds": 0.466
        },
        "pgpe-deeppoly@0.1": {
            "seconds_per_example_member": 0.001879,
            "setup_seconds": 1.717
        },
        "rgs-box@0.1": {
            "seconds_per_example_member": 9.337e-05,
            "setup_seconds": 0.09239
        },
        "rgs-hbox@0.1": {
            "seconds_per_example_member": 0.00274,
            "setup_seconds": 0.2209
        },
        "rgs-crown-ibp@0.1": {
            "seconds_per_example_member": 0.001428,
            "setup_seconds": 0.3134
        },
        "rgs-deeppoly@0.1": {
            "seconds_per_example_member": 0.005678,
            "setup_seconds": 0.5026
        },
        "pgd-box@0.3": {
            "seconds_per_example_member": 0.0004737,
            "setup_seconds": 0.002301
        },
        "grad-box@0.3": {
            "seconds_per_example_member": 0.000233,
            "setup_seconds": 0.02465
        },
        "grad-hbox@0.3": {
            "seconds_per_example_member": 0.001708,
            "setup_seconds": 0.03589
        },
        "grad-crown-ibp@0.3": {
            "seconds_per_example_member": 0.000955,
            "setup_seconds": 0.1428
        },
        "grad-deeppoly@0.3": {
            "seconds_per_example_member": 0.004161,
            "setup_seconds": 0.1396
        },
        "pgpe-box@0.3": {
            "seconds_per_example_member": 6.412e-05,
            "setup_seconds": 0.06413
        },
        "pgpe-hbox@0.3": {
            "seconds_per_example_member": 0.0007764,
            "setup_seconds": 0.614
        },
        "pgpe-crown-ibp@0.3": {
            "seconds_per_example_member": 0.0007681,
            "setup_seconds": -0.02503
        },
        "pgpe-deeppoly@0.3": {
            "seconds_per_example_member": 0.001737,
            "setup_seconds": 1.803
        },
        "rgs-box@0.3": {
            "seconds_per_example_member": 9.195e-05,
            "setup_seconds": 0.3674
        },
        "rgs-hbox@0.3": {
            "seconds_per_example_member": 0.002868,
            "setup_seconds": 0.267
        },
        "rgs-crown-ibp@0.3": {
            "seconds_per_example_member": 0.001528,
            "setup_seconds": 0.2605
        },
        "rgs-deeppoly@0.3": {
            "seconds_per_example_member": 0.005876,
            "setup_seconds": 0.628
        }
    },
    "bounds": {
        "0.1": {
            "digits": 32,
            "pgd_seconds_per_digit": 0.008374,
            "domains": {
                "box": {
                    "compile_seconds": 0.01365,
                    "seconds_per_digit": 9.774e-05
                },
                "hbox": {
                    "compile_seconds": 0.01564,
                    "seconds_per_digit": 0.001137
                },
                "zonotope": {
                    "compile_seconds": 0.01459,
                    "seconds_per_digit": 0.00142
                },
                "crown-ibp": {
                    "compile_seconds": 0.1263,
                    "seconds_per_digit": 0.002898
                },
                "deeppoly": {
                    "compile_seconds": 0.1336,
                    "seconds_per_digit": 0.004603
                }
            }
        },
        "0.3": {
            "digits": 32,
            "pgd_seconds_per_digit": 0.007764,
            "domains": {
                "box": {
                    "compile_seconds": 0.02435,
                    "seconds_per_digit": 0.0001787
                },
                "hbox": {
                    "compile_seconds": 0.02254,
                    "seconds_per_digit": 0.001303
                },
                "zonotope": {
                    "compile_seconds": 0.01657,
                    "seconds_per_digit": 0.001437
                },
                "crown-ibp": {
                    "compile_seconds": 0.1255,
                    "seconds_per_digit": 0.003152
                },
                "deeppoly": {
                    "compile_seconds": 0.151,
                    "seconds_per_digit": 0.004529
                }
            }
        }
    }
}
