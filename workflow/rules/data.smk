rule prepare:
    """Read, verify (checksums of decoded content), split and save one dataset as tensors. It
    depends on the dataset's registry entry and reader (a fingerprint), not on the registry's file:
    adding a dataset reruns nothing else."""
    output:
        "resources/data/{dataset}.pt",
    params:
        data_root=data_root,
        dataset=lambda w: bpdatasets.fingerprint(w.dataset),
    log:
        "logs/prepare/{dataset}.log",
    benchmark:
        "benchmarks/prepare/{dataset}.tsv"
    conda:
        "../envs/bpfree.yaml"
    shell:
        "bpfree prepare --dataset {wildcards.dataset} --data-root={params.data_root:q} --out {output:q} > {log:q} 2>&1"
