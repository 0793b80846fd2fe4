localrules:
    report,


REPORT = "../report"  # captions, relative to this file


rule report:
    """Per-run summary, per-cell statistics, paired deltas against bp, the tables with the
    published values beside ours, and the plots; all of them go into `snakemake --report`."""
    input:
        metrics=final_runs(),
        src=[str(SRC / f) for f in ("report.py", "stats.py", "metering.py")],
        published=[
            str(SRC / "published" / f"published_{t}.csv")
            for t in ("results", "deltas", "claims")
        ],
    output:
        summary=report(
            "results/summary.csv", caption=f"{REPORT}/summary.rst", category="3. Data"
        ),
        cells=report("results/cells.csv", caption=f"{REPORT}/cells.rst", category="3. Data"),
        deltas=report(
            "results/deltas.csv", caption=f"{REPORT}/deltas_csv.rst", category="3. Data"
        ),
        to_target=report(
            "results/to_target.csv", caption=f"{REPORT}/to_target_csv.rst", category="3. Data"
        ),
        table="results/table.md",
        delta_table="results/deltas.md",
        table_html=report(
            "results/table.html",
            caption=f"{REPORT}/table.rst",
            category="1. Tables",
            labels={"table": "absolute, beside published"},
        ),
        deltas_html=report(
            "results/deltas.html",
            caption=f"{REPORT}/deltas.rst",
            category="1. Tables",
            labels={"table": "paired deltas against bp"},
        ),
        energy_plot=report(
            "results/plots/accuracy_vs_energy.png",
            caption=f"{REPORT}/accuracy_vs_energy.rst",
            category="2. Figures",
            labels={"figure": "accuracy vs energy"},
        ),
        curves_plot=report(
            "results/plots/learning_curves.png",
            caption=f"{REPORT}/learning_curves.rst",
            category="2. Figures",
            labels={"figure": "learning curves"},
        ),
        layer_plot=report(
            "results/plots/layer_accuracy.png",
            caption=f"{REPORT}/layer_accuracy.rst",
            category="2. Figures",
            labels={"figure": "per-layer accuracy"},
        ),
        target_plot=report(
            "results/plots/to_target.png",
            caption=f"{REPORT}/to_target.rst",
            category="2. Figures",
            labels={"figure": "time and energy to target"},
        ),
        components_plot=report(
            "results/plots/energy_components.png",
            caption=f"{REPORT}/energy_components.rst",
            category="2. Figures",
            labels={"figure": "energy by component"},
        ),
    params:
        # protocol.statistics, with the time-to-target fraction of protocol.metering
        statistics=lambda w: bpcfg.dumps(
            {
                **(config["protocol"].get("statistics") or {}),
                **{
                    k: v
                    for k, v in (config["protocol"].get("metering") or {}).items()
                    if k == "target_fraction"
                },
            }
        ),
    log:
        "logs/report.log",
    benchmark:
        "benchmarks/report.tsv"
    conda:
        "../envs/bpfree.yaml"
    shell:
        "bpfree report --out-dir results --statistics {params.statistics:q} {input.metrics:q} > {log:q} 2>&1"
