rule train:
    """One final run: best parameters, one seed, metered; writes metrics.json and epochs.csv. With
    protocol.metering.alone it waits until no other final run or search worker is on its host (CPU)
    or GPU, and holds it until it ends (bpfree.alone)."""
    input:
        data="resources/data/{dataset}.pt",
        best="results/search/{dataset}/{architecture}/{algorithm}/best.json",
        src=algo_src,
        core=CORE_SRC,
        meter=[str(f) for f in bpsources.package_modules("metering", SRC)],
    output:
        metrics="results/runs/{dataset}/{architecture}/{algorithm}/seed{seed}/metrics.json",
        epochs="results/runs/{dataset}/{architecture}/{algorithm}/seed{seed}/epochs.csv",
    params:
        spec=train_spec,
        out_dir=subpath(output.metrics, parent=True),
    threads: config["threads"]
    resources:
        gpu=GPUS,
        metered=METERED,
        slurm_extra=repr(EXCLUSIVE) if EXCLUSIVE else "",  # read by the SLURM executor only
    log:
        "logs/train/{dataset}/{architecture}/{algorithm}/seed{seed}.log",
    benchmark:
        "benchmarks/train/{dataset}/{architecture}/{algorithm}/seed{seed}.tsv"
    conda:
        "../envs/bpfree.yaml"
    shell:
        "bpfree train --spec {params.spec:q} --data {input.data:q} --best {input.best:q} "
        "--seed {wildcards.seed} --out-dir {params.out_dir:q} --threads {threads} --overlap-dir logs/metered "
        "> {log:q} 2>&1"
