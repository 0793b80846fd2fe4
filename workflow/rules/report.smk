from bpfree import report as bpreport


localrules:
    report,


REPORT = "../report"  # captions, relative to this file


rule report:
    """Per-run summary, per-cell statistics, paired deltas against bp, the tables with the
    published values beside ours, and the plots; all of them go into `snakemake --report`."""
    input:
        metrics=final_runs(),
        # the report package's modules (editing one reruns the report), then what it reads
        src=[str(f) for f in bpsources.package_modules("report", SRC)]
        + [
            str(SRC / f)
            for f in ("stats.py", "compared.py", "verdicts.py", "target.py", "schema.py", "tiers.py")
        ],
        published=[
            str(SRC / "published" / f"published_{t}.csv") for t in bpreport.published.TABLES
        ],
    output:
        # bpfree.report.OUTPUTS, the one list of the report's files; report(...) where captioned
        **bpreport.rule_outputs(report, REPORT),
    params:
        statistics=lambda w: bpcfg.dumps(config["protocol"].get("statistics") or {}),
    log:
        "logs/report.log",
    benchmark:
        "benchmarks/report.tsv"
    conda:
        "../envs/bpfree.yaml"
    shell:
        "bpfree report --out-dir results --statistics {params.statistics:q} {input.metrics:q} > {log:q} 2>&1"
