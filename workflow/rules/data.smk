rule prepare:
    """Read, verify (checksums of decoded content), split and save one dataset as tensors."""
    input:
        src=str(SRC / "data.py"),
    output:
        "resources/data/{dataset}.pt",
    params:
        data_root=data_root,
    log:
        "logs/prepare/{dataset}.log",
    benchmark:
        "benchmarks/prepare/{dataset}.tsv"
    conda:
        "../envs/bpfree.yaml"
    shell:
        "bpfree prepare --dataset {wildcards.dataset} --data-root={params.data_root:q} --out {output:q} > {log:q} 2>&1"
