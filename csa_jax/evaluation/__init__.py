"""The revisited Oxford/Paris protocol (``revisited``: exact mAP and mP@k from rankings or from
full scores, the one percent rounding) and the one evaluation routine (``evaluate``)."""
