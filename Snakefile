# bpfree: data -> per-algorithm Optuna search -> final runs over seeds (metered) -> report.
# Run: snakemake --cores 2        Config: config/config.yaml (schema: src/bpfree/config.schema.yaml)
from pathlib import Path

from snakemake.utils import min_version

min_version("9.0")


# The default config applies only when no --configfile is given: Snakemake would otherwise merge it
# under the user's file, and its search spaces and entries would leak into a run of that file.
if not workflow.overwrite_configfiles:

    configfile: str(Path(workflow.basedir) / "config" / "config.yaml")


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


onsuccess:
    if Path("results/table.md").exists():  # the report was built (not a run of single targets)
        print(f"bpfree: done. Tables: {Path('results/table.md').resolve()} and deltas.md beside it; figures: "
              "results/*.png; per-job logs (one line per epoch or trial): logs/; the HTML report: "
              "snakemake --report report.html")
