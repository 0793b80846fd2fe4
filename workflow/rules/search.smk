rule search:
    """Optuna study (TPE, seeded; same budget for every algorithm). Outputs the best parameters
    and every trial; the journal beside them lets a killed search resume."""
    input:
        data="resources/data/{dataset}.pt",
        src=algo_src,
        core=CORE_SRC,
    output:
        best="results/search/{dataset}/{architecture}/{algorithm}/best.json",
        trials="results/search/{dataset}/{architecture}/{algorithm}/trials.csv",
    params:
        spec=search_spec,
        journal=journal,
    threads: config["threads"]
    log:
        "logs/search/{dataset}/{architecture}/{algorithm}.log",
    benchmark:
        "benchmarks/search/{dataset}/{architecture}/{algorithm}.tsv"
    conda:
        "../envs/bpfree.yaml"
    shell:
        "bpfree search --spec {params.spec:q} --data {input.data:q} --journal {params.journal:q} "
        "--best {output.best:q} --trials {output.trials:q} --threads {threads} > {log:q} 2>&1"
