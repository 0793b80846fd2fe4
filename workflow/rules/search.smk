localrules:
    search,


rule search_worker:
    """One of the K = protocol.search.workers processes of a study (Optuna, TPE, seeded; the same
    budget for every algorithm). The workers share the study's journal and its trial budget; each
    stops when the study holds n_trials finished or running trials. A rerun resumes the study with
    every finished trial kept; the trials a killed worker left running are marked failed by the
    rerun of that same worker (see bpfree.search.run_search). K = 1 is exactly reproducible."""
    input:
        data="resources/data/{dataset}.pt",
        src=algo_src,
        core=CORE_SRC,
    output:
        "results/search/{dataset}/{architecture}/{algorithm}/workers/{worker}.json",
    params:
        spec=search_spec,
        journal=journal,
        workers=WORKERS,
    threads: config["threads"]
    resources:
        gpu=GPUS,
    log:
        "logs/search/{dataset}/{architecture}/{algorithm}/worker{worker}.log",
    benchmark:
        "benchmarks/search/{dataset}/{architecture}/{algorithm}/worker{worker}.tsv"
    conda:
        "../envs/bpfree.yaml"
    shell:
        "bpfree search --spec {params.spec:q} --data {input.data:q} --journal {params.journal:q} "
        "--worker {wildcards.worker} --workers {params.workers} --worker-out {output:q} "
        "--threads {threads} > {log:q} 2>&1"


rule search:
    """The best parameters and every trial of a study, once all its workers have stopped (cheap:
    reads the journal; a local rule). Fails, naming the study, if it holds fewer finished trials
    than its budget. With n_trials = 0 it writes the algorithm's fixed settings."""
    input:
        workers=search_workers,
        src=algo_src,
        core=CORE_SRC,
    output:
        best="results/search/{dataset}/{architecture}/{algorithm}/best.json",
        trials="results/search/{dataset}/{architecture}/{algorithm}/trials.csv",
    params:
        spec=search_spec,
        journal=journal,
    log:
        "logs/search/{dataset}/{architecture}/{algorithm}.log",
    conda:
        "../envs/bpfree.yaml"
    shell:
        "bpfree search --spec {params.spec:q} --journal {params.journal:q} --collect "
        "--best {output.best:q} --trials {output.trials:q} --worker-files {input.workers:q} > {log:q} 2>&1"
