{{/* Labels of every object of the chart. */}}
{{- define "dvo.labels" -}}
app.kubernetes.io/name: dvo-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{/* Pod selector. */}}
{{- define "dvo.selector" -}}
app.kubernetes.io/name: dvo-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}
