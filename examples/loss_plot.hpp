// A loss-curve picture as SVG: per-iteration training loss (raw and smoothed) and the evaluation
// points of train and validation loss. SVG is plain text, so a few lines of our own replace a
// plotting dependency (Debian has no small C++ plotting library). Used by gemma3-train, not installed.
#pragma once

#include <gemma3/train/trainer.hpp>  // LossCurves

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

namespace gemma3 {

inline std::string loss_curve_svg(const LossCurves& c, const std::string& title) {
    const double width = 800, height = 480, left = 70, right = 20, top = 40, bottom = 50;
    double x_max = 1, y_min = std::numeric_limits<double>::infinity(), y_max = -y_min;
    for (const auto* series : {&c.train, &c.eval_train, &c.eval_val}) {
        for (const auto& p : *series) {
            if (!std::isfinite(p.loss)) continue;
            x_max = std::max(x_max, static_cast<double>(p.iteration));
            y_min = std::min(y_min, p.loss);
            y_max = std::max(y_max, p.loss);
        }
    }
    if (!std::isfinite(y_min)) y_min = 0, y_max = 1;
    if (y_max - y_min < 1e-9) y_max = y_min + 1;
    const double pad = 0.05 * (y_max - y_min);
    y_min -= pad;
    y_max += pad;
    const auto px = [&](double x) { return left + (width - left - right) * x / x_max; };
    const auto py = [&](double y) { return top + (height - top - bottom) * (y_max - y) / (y_max - y_min); };
    const auto number = [](double v) {
        char b[32];
        std::snprintf(b, sizeof b, "%.4g", v);
        return std::string(b);
    };

    std::ostringstream s;
    s << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << width << "\" height=\"" << height
      << "\" font-family=\"sans-serif\" font-size=\"12\">\n"
      << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
      << "<text x=\"" << width / 2 << "\" y=\"22\" text-anchor=\"middle\" font-size=\"15\">" << title << "</text>\n";
    for (int i = 0; i <= 5; ++i) {  // grid and tick labels
        const double y = y_min + (y_max - y_min) * i / 5, x = x_max * i / 5;
        s << "<line x1=\"" << left << "\" x2=\"" << width - right << "\" y1=\"" << py(y) << "\" y2=\"" << py(y)
          << "\" stroke=\"#ddd\"/>\n"
          << "<text x=\"" << left - 6 << "\" y=\"" << py(y) + 4 << "\" text-anchor=\"end\">" << number(y) << "</text>\n"
          << "<text x=\"" << px(x) << "\" y=\"" << height - bottom + 18 << "\" text-anchor=\"middle\">"
          << static_cast<std::int64_t>(x) << "</text>\n";
    }
    s << "<text x=\"" << width / 2 << "\" y=\"" << height - 10 << "\" text-anchor=\"middle\">iteration</text>\n"
      << "<text x=\"16\" y=\"" << height / 2 << "\" transform=\"rotate(-90 16 " << height / 2
      << ")\" text-anchor=\"middle\">cross-entropy (nats)</text>\n";

    const auto polyline = [&](const std::vector<LossPoint>& points, const char* color, double stroke) {
        if (points.empty()) return;
        s << "<polyline fill=\"none\" stroke=\"" << color << "\" stroke-width=\"" << stroke << "\" points=\"";
        const std::size_t step = std::max<std::size_t>(1, points.size() / 2000);  // keep the file small
        for (std::size_t i = 0; i < points.size(); i += step) {
            if (std::isfinite(points[i].loss)) s << px(static_cast<double>(points[i].iteration)) << "," << py(points[i].loss) << " ";
        }
        s << "\"/>\n";
    };
    polyline(c.train, "#9ecae1", 1);
    // Exponential moving average over about 1/40 of the run; over the first points (about half the
    // span) the weight 1/(i+1) is larger and makes it a running mean, so the curve starts at the data.
    std::vector<LossPoint> smooth;
    const double span = std::max<double>(5, static_cast<double>(c.train.size()) / 40);
    double ema = 0;
    for (std::size_t i = 0; i < c.train.size(); ++i) {
        const double weight = std::max(2 / (span + 1), 1.0 / static_cast<double>(i + 1));
        ema += weight * (c.train[i].loss - ema);
        smooth.push_back({c.train[i].iteration, ema});
    }
    polyline(smooth, "#3182bd", 2);
    polyline(c.eval_train, "#31a354", 2);
    polyline(c.eval_val, "#e6550d", 2);
    for (const auto* series : {&c.eval_train, &c.eval_val}) {
        for (const auto& p : *series) {
            s << "<circle cx=\"" << px(static_cast<double>(p.iteration)) << "\" cy=\"" << py(p.loss) << "\" r=\"3\" fill=\""
              << (series == &c.eval_val ? "#e6550d" : "#31a354") << "\"/>\n";
        }
    }
    const char* names[] = {"train (per iteration, smoothed)", "train (evaluation)", "validation (evaluation)"};
    const char* colors[] = {"#3182bd", "#31a354", "#e6550d"};
    for (int i = 0; i < 3; ++i) {
        const double y = top + 10 + 18 * i;
        s << "<line x1=\"" << width - right - 230 << "\" x2=\"" << width - right - 205 << "\" y1=\"" << y << "\" y2=\"" << y
          << "\" stroke=\"" << colors[i] << "\" stroke-width=\"2\"/>\n"
          << "<text x=\"" << width - right - 200 << "\" y=\"" << y + 4 << "\">" << names[i] << "</text>\n";
    }
    s << "</svg>\n";
    return s.str();
}

}  // namespace gemma3
