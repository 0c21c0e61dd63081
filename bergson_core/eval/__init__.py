"""Evaluation of attribution scores.

subsets   which documents each retrained model keeps (random fraction, leave-k%-out chunks)
bank      the stored query losses of retrained models, reused for any number of score files
retrain   planning a bank and retraining one run (plain functions; the Prefect tasks wrap them)
lds       the linear datamodeling score: Spearman of summed scores vs measured losses
facts     a synthetic facts corpus whose supporting documents are known
metrics   MRR and recall@k of supporting documents
scores    score files (topk.parquet) as dense matrices
evaluate  LDS / recall of score files and their reports
report    Parquet tables, PNG plots, markdown
"""
