"""Second-order estimators through Hessian-vector products of the model: LiSSA (lissa.py) and Arnoldi
(arnoldi.py) over the curvature operator of operator.py; run.py holds the steps of their commands."""
