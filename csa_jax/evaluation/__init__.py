"""The revisited Oxford/Paris protocol: exact mAP and mP@k from rankings or from full scores."""
