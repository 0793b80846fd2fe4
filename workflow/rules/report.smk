localrules:
    report,


rule report:
    """summary.csv (one row per final run), table.md and the plots."""
    input:
        metrics=final_runs(),
        src=str(SRC / "report.py"),
    output:
        summary="results/summary.csv",
        table="results/table.md",
        energy_plot="results/plots/accuracy_vs_energy.png",
        curves_plot="results/plots/learning_curves.png",
    log:
        "logs/report.log",
    benchmark:
        "benchmarks/report.tsv"
    conda:
        "../envs/bpfree.yaml"
    shell:
        "bpfree report --out-dir results {input.metrics:q} > {log:q} 2>&1"
