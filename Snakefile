# bpfree: data -> per-algorithm Optuna search -> final runs over seeds (metered) -> report.
# Run: snakemake --cores 2        Config: config/config.yaml (schema: workflow/schemas/)
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/search.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        rules.report.output,
    default_target: True
