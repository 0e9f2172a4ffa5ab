"""Reports: collect each model's scores, build the tables, figures and documents."""
