"""Full-clone node deploy for the plain pyinfra CLI:

    pyinfra inventory/lab.py deploys/node.py
"""

from deploys.full import node

node()
