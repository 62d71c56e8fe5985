"""HTML readouts for a shape: parameter count, bound terms, predicted errors and optimal shapes."""

from __future__ import annotations

import html

from resnet_limits import bounds

LAWS = (("embedding", bounds.EMBEDDING_LAW), ("output", bounds.OUTPUT_LAW))


def shape_summary(L: int, M: int, D: int) -> dict:
    """Return the numbers that the explorer shows beside its sliders, all from ``resnet_limits.bounds``."""
    num_parameters = L * M * D
    terms = bounds.bound_terms(L, M, D)
    summary = {
        "P": num_parameters,
        "terms": terms,
        "terms_sum": float(sum(terms.values())),
        "laws": {},
    }
    for kind, law in LAWS:
        optimal = bounds.optimal_shape(num_parameters, law)
        exponents = bounds.optimal_exponents(law.terms)
        summary["laws"][kind] = {
            "terms": {term.name: term.formula for term in law.terms},
            "constants": dict(zip((term.name for term in law.terms), law.constants)),
            "predicted": float(law.predict(L, M, D)),
            "bound": float(law.bound(L, M, D)),
            "unit_bound": _unit_bound(law, L, M, D),
            "optimal_shape": optimal,
            "optimal_unit_bound": _unit_bound(law, optimal.L, optimal.M, optimal.D),
            "optimal_exponents": exponents,
        }
    return summary


def _unit_bound(law: bounds.ErrorLaw, L: int, M: int, D: int) -> float:
    """Return the law's bound with every constant 1, the constants that ``optimal_shape`` assumes."""
    return float(sum(law.term_values(L, M, D).values()))


def _number(value: float) -> str:
    return f"{value:.3g}"


def shape_summary_html(L: int, M: int, D: int) -> str:
    """Return ``shape_summary`` as an HTML block of small tables."""
    summary = shape_summary(L, M, D)
    terms = summary["terms"]
    embedding_formulas = summary["laws"]["embedding"]["terms"]
    term_rows = "".join(
        f"<tr><td>{html.escape(embedding_formulas[name])}</td><td>{_number(value)}</td></tr>"
        for name, value in terms.items()
    )
    law_rows = []
    shape_rows = []
    for kind, law in summary["laws"].items():
        shape = law["optimal_shape"]
        exponents = law["optimal_exponents"]
        law_rows.append(
            f"<tr><td>{kind}</td><td>{_number(law['predicted'])}</td><td>{_number(law['bound'])}</td></tr>"
        )
        shape_rows.append(
            f"<tr><td>{kind}</td><td>L={shape.L}, M={shape.M}, D={shape.D}</td>"
            f"<td>{_number(law['optimal_unit_bound'])}</td><td>{_number(law['unit_bound'])}</td>"
            f"<td>P^{exponents.depth:.3g}, P^{exponents.width:.3g}, P^{exponents.dim:.3g}; "
            f"err ~ P^-{exponents.rate:.3g}</td></tr>"
        )
    smaller = [kind for kind, law in summary["laws"].items() if law["unit_bound"] < law["optimal_unit_bound"]]
    smaller_note = (
        f" Here the current shape has the smaller bound ({', '.join(smaller)} error): "
        "the width term depends on L and M only through L M, so at a fixed P extra depth keeps "
        "lowering the bound, but the optimal shape is the one with the least depth."
        if smaller else ""
    )
    return (
        '<div class="explorer-summary" style="font-size: 13px; line-height: 1.4;">'
        f"<p><b>P = L M D = {summary['P']:,}</b> (L={L}, M={M}, D={D})</p>"
        "<p>Bound err &le; C (1/L + sqrt(D/(L M)) + 1/sqrt(D)):</p>"
        '<table style="border-collapse: collapse;"><tr><th style="text-align:left">term</th>'
        '<th style="text-align:left">value</th></tr>'
        f"{term_rows}<tr><td><b>sum (C = 1)</b></td><td><b>{_number(summary['terms_sum'])}</b></td></tr>"
        "</table>"
        "<p>Error laws with their fitted constants, at this shape:</p>"
        '<table style="border-collapse: collapse;"><tr><th style="text-align:left">error</th>'
        '<th style="text-align:left">predicted</th><th style="text-align:left">bound</th></tr>'
        f"{''.join(law_rows)}</table>"
        '<p style="color:#555">predicted: root sum of squares of the terms times their constants; '
        "bound: their sum.</p>"
        f"<p>Optimal shape for P = {summary['P']:,}, with every constant 1:</p>"
        '<table style="border-collapse: collapse;"><tr><th style="text-align:left">error</th>'
        '<th style="text-align:left">optimal shape</th>'
        '<th style="text-align:left">its bound (constants 1)</th>'
        '<th style="text-align:left">this shape\'s bound (constants 1)</th>'
        '<th style="text-align:left">optimal rate</th></tr>'
        f"{''.join(shape_rows)}</table>"
        '<p style="color:#555">The optimal shape makes the three terms equal when every constant is 1. '
        "Growing L, M and D as the powers of P in the last column makes the bound fall fastest in P, "
        f"and among such paths this one has the least depth.{html.escape(smaller_note)}</p>"
        "</div>"
    )


def transformer_shape_summary(L: int, H: int, D: int, key_dim: int, value_dim: int) -> dict:
    """Return the numbers that the Transformer explorer shows beside its sliders, for M = H."""
    num_parameters = bounds.transformer_num_parameters(L, H, H, D, key_dim, value_dim)
    terms = bounds.transformer_bound_terms(L, H, H, D)
    summary = {"P": num_parameters, "terms": terms, "terms_sum": float(sum(terms.values())), "laws": {}}
    for kind, law in LAWS:
        summary["laws"][kind] = {
            "predicted": bounds.transformer_predict(law, L, H, H, D),
            "bound": bounds.transformer_bound(law, L, H, H, D),
            "optimal_shape": bounds.transformer_optimal_shape(num_parameters, law, key_dim=key_dim, value_dim=value_dim),
        }
    return summary


TRANSFORMER_FORMULAS = {"depth": "1/L", "attention": "sqrt(D/(L H))", "width": "sqrt(D/(L M))", "embedding": "1/sqrt(D)"}


def transformer_shape_summary_html(L: int, H: int, D: int, key_dim: int, value_dim: int) -> str:
    """Return ``transformer_shape_summary`` as an HTML block of small tables."""
    summary = transformer_shape_summary(L, H, D, key_dim, value_dim)
    term_rows = "".join(
        f"<tr><td>{html.escape(TRANSFORMER_FORMULAS[name])}</td><td>{_number(value)}</td></tr>"
        for name, value in summary["terms"].items()
    )
    law_rows = []
    for kind, law in summary["laws"].items():
        shape = law["optimal_shape"]
        law_rows.append(
            f"<tr><td>{kind}</td><td>{_number(law['predicted'])}</td><td>{_number(law['bound'])}</td>"
            f"<td>L={shape.L}, H=M={shape.H}, D={shape.D} (bound {_number(shape.bound)})</td></tr>"
        )
    return (
        '<div class="explorer-summary" style="font-size: 13px; line-height: 1.4;">'
        f"<p><b>P = L D (M + H (d_k + d_v)) = {summary['P']:,}</b> "
        f"(L={L}, H=M={H}, D={D}, d_k={key_dim}, d_v={value_dim})</p>"
        "<p>Bound err &le; C (1/L + sqrt(D/(L H)) + sqrt(D/(L M)) + 1/sqrt(D)):</p>"
        '<table style="border-collapse: collapse;"><tr><th style="text-align:left">term</th>'
        '<th style="text-align:left">value</th></tr>'
        f"{term_rows}<tr><td><b>sum (C = 1)</b></td><td><b>{_number(summary['terms_sum'])}</b></td></tr>"
        "</table>"
        "<p>Error laws (constants fitted for ResNets; the attention term takes the width term's):</p>"
        '<table style="border-collapse: collapse;"><tr><th style="text-align:left">error</th>'
        '<th style="text-align:left">predicted</th><th style="text-align:left">bound</th>'
        '<th style="text-align:left">optimal shape at this P</th></tr>'
        f"{''.join(law_rows)}</table>"
        '<p style="color:#555">With M = H the attention and perceptron terms are equal, so the optimal '
        "shape grows L, H and D as P^(1/6), P^(1/2), P^(1/3) for the embedding error, as for a ResNet.</p>"
        "</div>"
    )
