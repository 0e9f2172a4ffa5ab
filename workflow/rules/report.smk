# The aggregate report: the paper's Table 1 layout, think-minus-nothink deltas, figures.


rule report:
    input:
        scores=PLAN.report_scores(),
        checkpoints=PLAN.report_checkpoints(),
    output:
        report="results/report/report.md",
        html="results/report/report.html",
        table=report(
            "results/report/main_table.csv",
            caption="../report/main_table.rst",
            category="Tables",
        ),
        figures=report(
            directory("results/report/figures"),
            patterns=["{name}.png"],
            caption="../report/figures.rst",
            category="Figures",
        ),
    params:
        config=CONFIG,
    log:
        "results/logs/report.log",
    conda:
        "../../envs/report.yaml"
    shell:
        "python -m rlmt.cli report build --config {params.config} --out results/report > {log} 2>&1"
